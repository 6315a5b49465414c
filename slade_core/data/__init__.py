"""The data stage: dataset manifests + a preset's `data:` section -> index.parquet.

    from slade_core.data import load_data_preset, prepare_data
    prepared = prepare_data(load_data_preset("birds_offline"), out_dir, downloads_dir)

Dataset manifests live in data_manifests/datasets/<name>.yaml (see manifest.py for the
types: cub200, cars196, inshop, nabirds, compcars, fashion200k, folder, csv, synthetic).
Relative paths in manifests resolve against the repository root after `${VAR:-default}`
expansion; the offline bird sets use SLADE_DATA_ROOT (default ../shared/data).
"""

from slade_core.data.prepare import PreparedData, prepare_data
from slade_core.data.preset import DataPreset, load_data_preset, parse_data_preset

__all__ = ["DataPreset", "PreparedData", "load_data_preset", "parse_data_preset", "prepare_data"]
