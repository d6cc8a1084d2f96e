# Shared helpers: validation, per-stage params, artifact paths. Rules only wire artifacts together;
# every command is a thin `cxrclip <stage>` CLI whose params keys come from cxrclip.cli (one source).
import os

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from cxrclip.cli import stage_params
from cxrclip.config import SCHEMA_PATH, ParamsError, select_params, validate_params

try:  # one line naming the key, e.g. "params.yaml: invalid value for 'images.size': ..."
    validate_params(config)
except ParamsError as _exc:
    raise WorkflowError(str(_exc)) from None
validate(config, str(SCHEMA_PATH))  # Snakemake's own check against the same schema

with open("params.yaml") as _fh:
    if yaml.safe_load(_fh) != config:
        raise WorkflowError(
            "cxrclip reads params.yaml only (DVC does too): edit params.yaml instead of "
            "passing --config/--configfile overrides, so Snakemake and DVC stay in agreement."
        )

# Software environment of every rule with --software-deployment-method conda (same deps as pyproject).
CONDA_ENV = "../../environment.yml"

METHODS = ["random", "tfidf_prior", "tfidf_indication", "zeroshot", "finetuned"]
# Rules that use every core ask for all of them; Snakemake scales down to --cores.
ALL_CORES = os.cpu_count() or 1
CLIP_METHODS = ["zeroshot", "finetuned"]
KAGGLE = config["source"]["kind"] == "kaggle"
KAGGLE_DIR = config["source"]["kaggle_dir"]
SYNTHETIC = config["synthetic"]["enabled"]

RAW_REPORTS = "data/raw/NLMCXR_reports.tgz"
RAW_IMAGES = "data/raw/NLMCXR_png.tgz"
REPORTS = "data/interim/reports.parquet"
REPORT_EXCLUSIONS = "data/interim/report_exclusions.parquet"
IMAGES = "data/interim/images.parquet"
IMAGE_EXCLUSIONS = "data/interim/image_exclusions.parquet"
CACHE = "data/processed/images_224.npy"
PAIRS = "data/processed/pairs.parquet"
PAIR_EXCLUSIONS = "data/processed/pair_exclusions.parquet"
DATA_SUMMARY = "reports/data/counts.md"
WEIGHTS = "models/finetuned/model.safetensors"
HISTORY = "models/finetuned/history.csv"


def stage_cfg(command, keys=None):
    """The params.yaml keys read by one stage (rerun trigger when they change)."""
    return select_params(config, keys if keys is not None else stage_params(command))


# Keys each scoring method reads (baselines ignore the model; DVC lists the same keys).
SCORE_KEYS = {
    "random": ["seed", "eval.split"],
    "tfidf_prior": ["eval.split"],
    "tfidf_indication": ["eval.split"],
    "zeroshot": ["eval.split", "model", "embed"],
    "finetuned": ["eval.split", "model.name", "embed"],
}

# After a successful run, `dvc commit` when this working directory holds the DVC pipeline.
DVC_COMMIT = os.path.exists("dvc.yaml") and os.environ.get("CXRCLIP_DVC_COMMIT", "1") != "0"


def download_inputs(wildcards):
    """Local sources (paths, file:// URLs, the synthetic archives) are real inputs; remote URLs are not."""
    inputs = {}
    for key in ("reports_url", "images_url"):
        url = config["source"][key]
        path = url[len("file://") :] if url.startswith("file://") else url
        if "://" not in path:
            inputs[key] = path
    return inputs
