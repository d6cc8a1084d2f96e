# Contrastive fine-tuning (the study's recipe by default). Needs a GPU for ViT-B-32 at full scale;
# falls back to the CPU with a warning. Local runs serialise GPU jobs with `--resources gpu=1`.


rule finetune:
    """Fine-tune CLIP on the train split, validate each epoch, keep the best weights (resumable)."""
    input:
        pairs=PAIRS,
        reports=REPORTS,
        cache=CACHE,
    output:
        weights=WEIGHTS,
        history=HISTORY,
        steps="models/finetuned/steps.csv",
        metrics="models/finetuned/train_metrics.json",
    params:
        cfg=stage_cfg("finetune"),
    log:
        "logs/finetune.log",
    conda:
        CONDA_ENV
    threads: 4
    resources:
        gpu=1,
        runtime=240,
    shell:
        "cxrclip finetune --params params.yaml --pairs {input.pairs} --reports {input.reports} "
        "--cache {input.cache} --out-dir models/finetuned 2> {log}"
