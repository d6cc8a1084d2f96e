# cxrclip: CLIP for chest X-ray report retrieval on IU X-ray (NLM Open-i).
#   snakemake --cores all                      # the whole study on the real data
#   snakemake --cores all --directory demo     # offline demo on generated Open-i-format data
# params.yaml (in the working directory) is the single configuration, shared with DVC (dvc.yaml).
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/reporting.smk"


rule all:
    input:
        DATA_SUMMARY,
        expand("results/{method}/metrics.json", method=METHODS),
        "reports/metrics.md",
        "reports/figures",
    default_target: True


onsuccess:
    # Keep DVC in step: record what Snakemake just built in dvc.lock (and the DVC cache), so that
    # `dvc status` / `dvc repro` see unchanged stages as up to date. Opt out: CXRCLIP_DVC_COMMIT=0.
    if DVC_COMMIT:
        shell("dvc commit --force --quiet")
