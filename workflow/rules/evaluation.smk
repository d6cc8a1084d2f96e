# Evaluation: every method writes results/<method>/scores.npz, then the same evaluation code scores it.

BASELINES = ["random", "tfidf_prior", "tfidf_indication"]


rule score_baseline:
    """Baseline similarity of each evaluation image to every unique candidate report text."""
    input:
        pairs=PAIRS,
        reports=REPORTS,
    output:
        scores="results/{baseline}/scores.npz",
    params:
        cfg=lambda wildcards: stage_cfg("score", SCORE_KEYS[wildcards.baseline]),
    log:
        "logs/score_{baseline}.log",
    conda:
        CONDA_ENV
    wildcard_constraints:
        baseline="|".join(BASELINES),
    shell:
        "cxrclip score --params params.yaml --method {wildcards.baseline} --pairs {input.pairs} "
        "--reports {input.reports} --out {output.scores} 2> {log}"


rule embed_zeroshot:
    """Zero-shot CLIP: embed evaluation images (224 px cache) and candidate texts; cosine scores."""
    input:
        pairs=PAIRS,
        reports=REPORTS,
        cache=CACHE,
    output:
        scores="results/zeroshot/scores.npz",
        embeddings="results/zeroshot/embeddings.npz",
    params:
        cfg=stage_cfg("score", SCORE_KEYS["zeroshot"]),
    log:
        "logs/embed_zeroshot.log",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "cxrclip score --params params.yaml --method zeroshot --pairs {input.pairs} "
        "--reports {input.reports} --cache {input.cache} --out {output.scores} "
        "--embeddings-out {output.embeddings} 2> {log}"


rule embed_finetuned:
    """Fine-tuned CLIP through the same embedding code as zero-shot."""
    input:
        pairs=PAIRS,
        reports=REPORTS,
        cache=CACHE,
        weights=WEIGHTS,
    output:
        scores="results/finetuned/scores.npz",
        embeddings="results/finetuned/embeddings.npz",
    params:
        cfg=stage_cfg("score", SCORE_KEYS["finetuned"]),
    log:
        "logs/embed_finetuned.log",
    conda:
        CONDA_ENV
    resources:
        gpu=1,
    shell:
        "cxrclip score --params params.yaml --method finetuned --pairs {input.pairs} "
        "--reports {input.reports} --cache {input.cache} --weights {input.weights} "
        "--out {output.scores} --embeddings-out {output.embeddings} 2> {log}"


rule evaluate:
    """Metric suite (paper protocol, report level, label level, bootstrap CIs) + one MLflow run."""
    input:
        scores="results/{method}/scores.npz",
        pairs=PAIRS,
        reports=REPORTS,
    output:
        metrics="results/{method}/metrics.json",
        rankings="results/{method}/rankings.parquet",
    params:
        cfg=stage_cfg("evaluate"),
    log:
        "logs/evaluate_{method}.log",
    conda:
        CONDA_ENV
    wildcard_constraints:
        method="|".join(METHODS),
    shell:
        "cxrclip evaluate --params params.yaml --method {wildcards.method} --scores {input.scores} "
        "--pairs {input.pairs} --reports {input.reports} --out {output.metrics} "
        "--rankings-out {output.rankings} 2> {log}"
