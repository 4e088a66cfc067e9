"""Registry of the remote-sensing caption benchmarks and resolution of ``--data NAME``.

Every fact here (URL, size, checksum) was read from a public source named in ``Resource.source``;
docs/datasets.md lists them. A checksum that no source publishes is ``None``: such a file is verified
by size only (or not at all when no size is published either) and ``fetch`` warns about it. Never
fill one in from a download you made yourself without saying so in ``source``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tfduch.errors import DataError

__all__ = [
    "DATA_HOME_ENV",
    "MIRROR_ENV",
    "MARKER",
    "REGISTRY",
    "DatasetSpec",
    "Resource",
    "data_home",
    "get_spec",
    "installed_path",
    "is_registered",
]

DATA_HOME_ENV = "TFDUCH_DATA_HOME"
MIRROR_ENV = "TFDUCH_MIRROR"
#: Written last into a converted dataset folder; a folder without it is not a finished dataset.
MARKER = ".tfduch-dataset.json"

#: UC Merced Land Use class folders in alphabetical order; UCM-captions images 1..2100 are these classes in
#: blocks of 100 (image n belongs to class (n - 1) // 100), as the captions' own ``source_file`` names show.
UCM_CLASSES: tuple[str, ...] = (
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral", "denseresidential",
    "forest", "freeway", "golfcourse", "harbor", "intersection", "mediumresidential", "mobilehomepark",
    "overpass", "parkinglot", "river", "runway", "sparseresidential", "storagetanks", "tenniscourt",
)

_GDRIVE = "https://drive.google.com/uc?export=download&id="


@dataclass(frozen=True)
class Resource:
    """One file a dataset is built from."""

    filename: str  # name in the download folder (and under a --mirror)
    url: str | None  # None: no direct public URL is known; only the manual step gets it
    size: int | None = None  # bytes, when a source publishes it
    sha256: str | None = None
    md5: str | None = None
    source: str = ""  # where the URL / size / checksum were read
    manual: str = ""  # how a person gets the file when the URL cannot be reached

    @property
    def verified(self) -> str:
        """How the download is checked: 'sha256', 'md5', 'size only' or 'unverified'."""
        if self.sha256:
            return "sha256"
        if self.md5:
            return "md5"
        return "size only" if self.size else "unverified"


@dataclass(frozen=True)
class DatasetSpec:
    """A registered benchmark: where its files are and how they become a Karpathy folder."""

    name: str
    title: str
    homepage: str
    citation: str
    licence: str
    classes: str  # how scene classes are derived (documentation)
    converter: str  # key of tfduch.data.convert.CONVERTERS
    resources: tuple[Resource, ...]
    num_images: int | None = None
    aliases: tuple[str, ...] = field(default=())  # beyond NAME-captions and NAME_captions, which every one has


REGISTRY: dict[str, DatasetSpec] = {
    "ucm": DatasetSpec(
        name="ucm",
        title="UCM-captions (UC Merced Land Use with 5 captions per image)",
        homepage="https://github.com/201528014227051/RSICD_optimal",
        citation="B. Qu, X. Li, D. Tao, X. Lu, \"Deep semantic understanding of high resolution remote sensing "
        "image\", Int. Conf. on Computer, Information and Telecommunication Systems (CITS), 2016. Images: Y. Yang, "
        "S. Newsam, \"Bag-of-visual-words and spatial extensions for land-use classification\", ACM GIS 2010.",
        licence="research use (captions: no licence stated by the authors; UC Merced images are from the USGS "
        "National Map, public domain)",
        classes="from the image index: images 1..2100 are the 21 UC Merced classes in blocks of 100 "
        "(alphabetical class order)",
        converter="ucm",
        num_images=2100,
        aliases=("ucmcaptions",),
        resources=(
            Resource(
                filename="UCM_captions.zip",
                url=_GDRIVE + "1WNAQgdgghz0cz4rV_KmTNyNGF_m8cNkt",
                source="Google Drive id from isaaccorley/torchrs scripts/download_ucm_captions.sh; contents "
                "(dataset.json + imgs.rar) from albertofrizzera/VT-RSBS md_files/dataset_preparation.md; "
                "no size or checksum published",
                manual="the 'UCM_captions' download on https://github.com/201528014227051/RSICD_optimal "
                "(Baidu / MEGA https://mega.nz/folder/wCpSzSoS#RXzIlrv--TDt3ENZdKN8JA) or the Google Drive file "
                "https://drive.google.com/file/d/1WNAQgdgghz0cz4rV_KmTNyNGF_m8cNkt, saved as UCM_captions.zip",
            ),
        ),
    ),
    "sydney": DatasetSpec(
        name="sydney",
        title="Sydney-captions (613 images of Sydney, 5 captions each)",
        homepage="https://github.com/201528014227051/RSICD_optimal",
        citation="B. Qu, X. Li, D. Tao, X. Lu, \"Deep semantic understanding of high resolution remote sensing "
        "image\", CITS 2016. Images: F. Zhang, B. Du, L. Zhang, \"Saliency-guided unsupervised feature learning "
        "for scene classification\", IEEE TGRS 53(4), 2015.",
        licence="research use (no licence stated by the authors)",
        classes="its 7-class list (residential, airport, meadow, river, ocean, industrial, runway); the caption "
        "file carries no class per image, so without a class file each image is its own class (recall@K)",
        converter="sydney",
        num_images=613,
        resources=(
            Resource(
                filename="Sydney_captions.zip",
                url=_GDRIVE + "1zAA8qG8FZLCj2t4t9JPgNS48sA2iltaU",
                source="Google Drive id from isaaccorley/torchrs scripts/download_sydney_captions.sh; "
                "no size or checksum published",
                manual="the 'Sydney_captions' download on https://github.com/201528014227051/RSICD_optimal "
                "(Baidu / MEGA https://mega.nz/folder/pG4yTYYA#4c4buNFLibryZnlujsrwEQ) or the Google Drive file "
                "https://drive.google.com/file/d/1zAA8qG8FZLCj2t4t9JPgNS48sA2iltaU, saved as Sydney_captions.zip",
            ),
        ),
    ),
    "rsicd": DatasetSpec(
        name="rsicd",
        title="RSICD (10921 images, 5 captions each)",
        homepage="https://github.com/201528014227051/RSICD_optimal",
        citation="X. Lu, B. Wang, X. Zheng, X. Li, \"Exploring models and data for remote sensing image caption "
        "generation\", IEEE TGRS 56(4), 2018.",
        licence="research use, non-commercial (per the authors' answers in RSICD_optimal issue #3)",
        classes="from the file-name prefix (airport_12.jpg → airport); names without a prefix get 'unlabelled'",
        converter="prefix",
        num_images=10921,
        resources=(
            Resource(
                filename="RSICD_images.rar",
                url=_GDRIVE + "0B1jt7lJDEXy3SmZEdDd0aWpXcWc",
                source="Google Drive id from isaaccorley/torchrs scripts/download_rsicd.sh; no size or checksum "
                "published",
                manual="the RSICD image download on https://github.com/201528014227051/RSICD_optimal "
                "(Baidu / Google Drive / MEGA), saved as RSICD_images.rar",
            ),
            Resource(
                filename="dataset_rsicd.json",
                url=_GDRIVE + "1q8EcBWuCbvtTnMILE60WOhd9S0C4rsfT",
                source="Google Drive id from isaaccorley/torchrs scripts/download_rsicd.sh; no size or checksum "
                "published",
                manual="dataset_rsicd.json from https://github.com/201528014227051/RSICD_optimal",
            ),
        ),
    ),
    "rsitmd": DatasetSpec(
        name="rsitmd",
        title="RSITMD (4743 images, 5 captions each, fine-grained)",
        homepage="https://github.com/xiaoyuan1996/AMFMN/tree/master/RSITMD",
        citation="Z. Yuan et al., \"Exploring a fine-grained multiscale method for cross-modal remote sensing "
        "image retrieval\", IEEE TGRS, 2021, doi:10.1109/TGRS.2021.3078451.",
        licence="research use (no licence stated by the authors)",
        classes="from the file-name prefix (baseballfield_452.tif → baseballfield)",
        converter="prefix",
        num_images=4743,
        resources=(
            Resource(
                filename="RSITMD.zip",
                url=_GDRIVE + "1NJY86TAAUd8BVs7hyteImv8I2_Lh95W6",
                source="Google Drive link in xiaoyuan1996/AMFMN RSITMD/README.md (file structure images/ + "
                "dataset_RSITMD.json); the archive type is not stated (zip/tar/rar are all accepted); no size or "
                "checksum published",
                manual="the Google Drive link (or Baidu, password NIST) on "
                "https://github.com/xiaoyuan1996/AMFMN/tree/master/RSITMD, saved as RSITMD.zip "
                "(any zip/tar/rar archive holding images/ and dataset_RSITMD.json)",
            ),
        ),
    ),
    "nwpu": DatasetSpec(
        name="nwpu",
        title="NWPU-Captions (31500 NWPU-RESISC45 images, 5 captions each)",
        homepage="https://github.com/HaiyanHuang98/NWPU-Captions",
        citation="Q. Cheng, H. Huang, Y. Xu, Y. Zhou, H. Li, Z. Wang, \"NWPU-Captions dataset and MLCA-Net for "
        "remote sensing image captioning\", IEEE TGRS 60, 2022. Images: G. Cheng, J. Han, X. Lu, \"Remote sensing "
        "image scene classification: benchmark and state of the art\", Proc. IEEE 105(10), 2017.",
        licence="research use (no licence stated by the authors)",
        classes="the caption file's top-level keys (45 NWPU-RESISC45 classes; images sit in <class>/ folders)",
        converter="nwpu",
        num_images=31500,
        resources=(
            Resource(
                filename="NWPU_images.tar.gz",
                url="https://github.com/HaiyanHuang98/NWPU-Captions/raw/3f57039cd675e2575414d18d53e2d4dae2bcc7ce/"
                "NWPU_images.tar.gz",
                size=407575520,
                sha256="720d6c3430489c9aa99232c3d53b6b9ca48d4b838918d17e7b6e766483fddbec",
                source="Git LFS pointer of NWPU_images.tar.gz in HaiyanHuang98/NWPU-Captions at commit 3f57039c "
                "(oid sha256 + size)",
                manual="NWPU_images.tar.gz from https://github.com/HaiyanHuang98/NWPU-Captions",
            ),
            Resource(
                filename="dataset_nwpu.json",
                url=None,
                source="file name used by NWPU-Captions users (e.g. datasets/NWPU-Captions/dataset_nwpu.json); no "
                "public direct URL, size or checksum was found",
                manual="dataset_nwpu.json from the NWPU-Captions authors (https://github.com/HaiyanHuang98/"
                "NWPU-Captions)",
            ),
        ),
    ),
}


def _aliases() -> dict[str, str]:
    out = {}
    for spec in REGISTRY.values():
        # the dataset's own name and its paper's "<name>-captions" spelling, in both separators, always resolve
        for alias in (spec.name, f"{spec.name}-captions", f"{spec.name}_captions", *spec.aliases):
            out[alias.lower()] = spec.name
    return out


def is_registered(name: str) -> bool:
    return str(name).strip().lower() in _aliases()


def get_spec(name: str) -> DatasetSpec:
    """The registered dataset called ``name`` (or one of its aliases); the error lists the known names."""
    key = _aliases().get(str(name).strip().lower())
    if key is None:
        raise DataError(f"unknown dataset {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[key]


def data_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where fetched datasets live: explicit > $TFDUCH_DATA_HOME > ~/.cache/tfduch/datasets."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tfduch" / "datasets"


def installed_path(name: str, home: str | os.PathLike[str] | None = None) -> Path | None:
    """The finished dataset folder of ``name`` under the data home, or None when it is not (fully) there."""
    target = data_home(home) / get_spec(name).name
    marker = target / MARKER
    if not marker.is_file():
        return None
    try:
        json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return target
