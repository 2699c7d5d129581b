"""Named corpora: resolve a recipe in ``data/`` to local files, downloading only as a last resort.

Lookup order for ``{split}.{lang}`` of corpus NAME:
1. ``$NMT_DATA_HOME/NAME/raw/`` (a local mirror, e.g. the project's ``../shared/data``);
2. ``~/.cache/nmt/NAME/raw/`` (where downloads go; ``$NMT_CACHE`` overrides the folder);
3. the recipe's ``url``: downloaded, gunzipped, checked against the recipe's sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tomllib
import urllib.request
from pathlib import Path

from nmt.errors import NmtError

DATA_HOME_ENV = "NMT_DATA_HOME"


def recipes_dir() -> Path:
    """The folder with the corpus recipes (installed as ``nmt_recipes``, or the repo's ``data/``)."""
    try:
        import nmt_recipes

        return Path(nmt_recipes.__path__[0])
    except ImportError:
        return Path(__file__).resolve().parents[1] / "data"


def load_recipe(name: str) -> dict:
    path = recipes_dir() / f"{name}.toml"
    if not path.exists():
        known = sorted(p.stem for p in recipes_dir().glob("*.toml"))
        raise NmtError(f"unknown corpus {name!r}; known corpora: {', '.join(known) or 'none'}")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def check_languages(name: str, *langs: str) -> None:
    """Fail unless corpus ``name`` has every language in ``langs`` (checked before any download)."""
    recipe = load_recipe(name)
    for lang in langs:
        if lang not in recipe["languages"]:
            raise NmtError(f"corpus {name} has no language {lang!r}; it has: {', '.join(recipe['languages'])}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(url: str, dest: Path, sha: str | None, searched: str = "the local folders") -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise NmtError(f"could not download {url} ({e}); not found in {searched} either: set {DATA_HOME_ENV} "
                       f"to a local copy (a folder holding {dest.parent.parent.name}/raw/)") from None
    tmp.write_bytes(gzip.decompress(data) if url.endswith(".gz") else data)
    if sha and _sha256(tmp) != sha:
        tmp.unlink()
        raise NmtError(f"{url}: checksum mismatch after download; the upstream file changed")
    tmp.replace(dest)


def corpus_file(name: str, split: str, lang: str, download: bool = True) -> Path:
    """The local path of ``split`` (train/valid/test) in language ``lang`` of corpus ``name``."""
    recipe = load_recipe(name)
    check_languages(name, lang)
    if split not in recipe["splits"]:
        raise NmtError(f"corpus {name} has no split {split!r}; it has: {', '.join(recipe['splits'])}")
    fname = f"{recipe['splits'][split]}.{lang}"
    sha = recipe.get("sha256", {}).get(fname)
    cache = Path(os.environ.get("NMT_CACHE", Path.home() / ".cache" / "nmt"))
    homes = [Path(os.environ[DATA_HOME_ENV])] if os.environ.get(DATA_HOME_ENV) else []
    candidates = [home / name / "raw" / fname for home in homes + [cache]]
    for path in candidates:
        if path.exists():
            if sha and _sha256(path) != sha:
                raise NmtError(f"{path}: checksum differs from the {name} recipe; replace the file")
            return path
    searched = " or ".join(str(p.resolve()) for p in candidates)
    if not download:
        raise NmtError(f"{fname} of {name} not found in {searched}; "
                       f"set {DATA_HOME_ENV} to a folder holding {name}/raw/")
    dest = cache / name / "raw" / fname
    _download(recipe["url"].format(split=recipe["splits"][split], lang=lang), dest, sha, searched)
    return dest
