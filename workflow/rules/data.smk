# Data stages: (generate) -> download -> parse_reports -> verify_images (+224 px cache) -> build_splits -> summary.


rule make_synthetic:
    """Generate Open-i-format archives (offline demo, tests): NLMCXR_reports.tgz + NLMCXR_png.tgz."""
    output:
        reports="data/synthetic/NLMCXR_reports.tgz",
        images="data/synthetic/NLMCXR_png.tgz",
        manifest="data/synthetic/manifest.json",
    params:
        cfg=stage_cfg("synth"),
    log:
        "logs/make_synthetic.log",
    conda:
        CONDA_ENV
    threads: ALL_CORES
    shell:
        "cxrclip synth --params params.yaml --out-dir data/synthetic --workers {threads} 2> {log}"


rule download:
    """Fetch the Open-i archives (resume, retries, sha256 recorded in download.json)."""
    input:
        unpack(download_inputs),
    output:
        reports=RAW_REPORTS,
        images=RAW_IMAGES,
        record="data/raw/download.json",
    params:
        cfg=stage_cfg("download"),
    log:
        "logs/download.log",
    conda:
        CONDA_ENV
    retries: 1
    shell:
        "cxrclip download --params params.yaml --out-dir data/raw 2> {log}"


rule parse_reports:
    """Open-i XML (or the Kaggle CSV) -> one cleaned row per report, exclusions with reasons."""
    input:
        source=f"{KAGGLE_DIR}/indiana_reports.csv" if KAGGLE else RAW_REPORTS,
    output:
        reports=REPORTS,
        exclusions=REPORT_EXCLUSIONS,
    params:
        cfg=stage_cfg("parse-reports"),
    log:
        "logs/parse_reports.log",
    conda:
        CONDA_ENV
    shell:
        "cxrclip parse-reports --params params.yaml --archive {input.source} "
        "--out {output.reports} --exclusions-out {output.exclusions} 2> {log}"


rule verify_images:
    """Decode every image once: verify (truncation, bombs) and write the 224 px uint8 cache."""
    input:
        source=f"{KAGGLE_DIR}/images" if KAGGLE else RAW_IMAGES,
        reports=REPORTS,
    output:
        images=IMAGES,
        exclusions=IMAGE_EXCLUSIONS,
        cache=CACHE,
        cache_info="data/processed/images_224.json",
    params:
        cfg=stage_cfg("verify-images"),
    log:
        "logs/verify_images.log",
    conda:
        CONDA_ENV
    threads: ALL_CORES
    shell:
        "cxrclip verify-images --params params.yaml --archive {input.source} --reports {input.reports} "
        "--out {output.images} --exclusions-out {output.exclusions} --cache {output.cache} 2> {log}"


rule build_splits:
    """Leak-free 80/10/10 splits grouped by report, stratified normal/abnormal; fails on any crossing id."""
    input:
        reports=REPORTS,
        images=IMAGES,
    output:
        pairs=PAIRS,
        exclusions=PAIR_EXCLUSIONS,
    params:
        cfg=stage_cfg("build-splits"),
    log:
        "logs/build_splits.log",
    conda:
        CONDA_ENV
    shell:
        "cxrclip build-splits --params params.yaml --reports {input.reports} --images {input.images} "
        "--out {output.pairs} --exclusions-out {output.exclusions} 2> {log}"


rule data_summary:
    """Counts (Markdown/CSV) and dataset figures into reports/data/."""
    input:
        reports=REPORTS,
        report_exclusions=REPORT_EXCLUSIONS,
        images=IMAGES,
        image_exclusions=IMAGE_EXCLUSIONS,
        pairs=PAIRS,
        pair_exclusions=PAIR_EXCLUSIONS,
        cache=CACHE,
    output:
        counts=DATA_SUMMARY,
        csv="reports/data/counts.csv",
        figures=report(
            multiext("reports/data/", "report_word_counts.png", "label_distribution.png", "sample_images.png"),
            category="Data",
            caption="../report/data.rst",
        ),
    log:
        "logs/data_summary.log",
    conda:
        CONDA_ENV
    shell:
        "cxrclip data-summary --params params.yaml --reports {input.reports} "
        "--report-exclusions {input.report_exclusions} --images {input.images} "
        "--image-exclusions {input.image_exclusions} --pairs {input.pairs} "
        "--pair-exclusions {input.pair_exclusions} --cache {input.cache} --out-dir reports/data 2> {log}"
