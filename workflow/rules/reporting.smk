# Results a reader takes in at a glance: tables and figures rendered from the artifacts.


rule render_tables:
    """One row per method with 95% intervals, normal vs abnormal, paired comparison, study vs. us."""
    input:
        metrics=expand("results/{method}/metrics.json", method=METHODS),
        rankings=expand("results/{method}/rankings.parquet", method=METHODS),
        history=HISTORY,
    output:
        md="reports/metrics.md",
        csv="reports/metrics.csv",
        html=report("reports/metrics.html", category="Results", caption="../report/metrics.rst"),
    params:
        cfg=stage_cfg("render-tables"),
    log:
        "logs/render_tables.log",
    conda:
        CONDA_ENV
    shell:
        "cxrclip render-tables --params params.yaml --results-dir results --history {input.history} "
        "--out-md {output.md} --out-csv {output.csv} --out-html {output.html} 2> {log}"


rule render_figures:
    """Training curves, cosine distributions, embedding map, retrieval examples, P@K per label."""
    input:
        metrics=expand("results/{method}/metrics.json", method=METHODS),
        rankings=expand("results/{method}/rankings.parquet", method=METHODS),
        scores=expand("results/{method}/scores.npz", method=METHODS),
        embeddings=expand("results/{method}/embeddings.npz", method=CLIP_METHODS),
        history=HISTORY,
        steps="models/finetuned/steps.csv",
        pairs=PAIRS,
        reports=REPORTS,
        cache=CACHE,
    output:
        figures=report(
            directory("reports/figures"),
            patterns=["{name}.png"],
            category="Figures",
            caption="../report/figures.rst",
        ),
    params:
        cfg=stage_cfg("render-figures"),
    log:
        "logs/render_figures.log",
    conda:
        CONDA_ENV
    shell:
        "cxrclip render-figures --params params.yaml --results-dir results --history {input.history} "
        "--steps {input.steps} --pairs {input.pairs} --reports {input.reports} --cache {input.cache} "
        "--out-dir {output.figures} 2> {log}"
