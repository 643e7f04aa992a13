"""Every save of a StateX config writes the model's own code beside it: each saved folder is a self-contained Hub repo.

transformers copies the code of a class registered with ``register_for_auto_class`` when it saves it;
StateX classes live in an installed package (absolute imports), so the copy is the flattened bundle
that ``statex_hf.hub`` builds instead. The hook sits on the config because every model save goes
through ``config.save_pretrained`` (``Trainer.save_model``, each checkpoint, ``push_to_hub``), and
``model.save_pretrained(push_to_hub=True)`` uploads only files written after it starts, which the
config's save is.
"""

from __future__ import annotations

import importlib
import os

PACKAGE = "statex_hf"


class SavesRemoteCode:
    """Config mixin: ``save_pretrained`` also writes the model code and points ``auto_map`` at it."""

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        # A bundled copy of this class (module transformers_modules.*) is saved by transformers' own
        # custom_object_save; only the package's classes write the bundle. The module is imported by name
        # so that the bundle does not carry the bundler.
        if type(self).__module__.startswith(f"{PACKAGE}.") and not os.path.isfile(save_directory):
            importlib.import_module(f"{PACKAGE}.hub").write_remote_code_for(self, save_directory)
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)


__all__ = ["SavesRemoteCode"]
