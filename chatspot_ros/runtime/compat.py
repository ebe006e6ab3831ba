"""The transformers versions the runtime supports, and the few version-dependent calls it makes.

The runtime owns its KV cache (``generation.prefill_prefix`` and the static decoder run the
checkpoint's own modules over buffers of their own). Where it still calls a transformers forward
(the dynamic loop, and models the static decoder does not support) it uses only public API:
``DynamicCache`` filled through ``Cache.update`` and read through ``Cache.update``'s return, and
the cache passed under the keyword the installed forward declares (``past_key_values`` up to
5.2x, ``cache`` from the version that renamed it; the old name only warns there).

The range is proven by CI: ``make test-compat`` runs the runtime, generation and parity tests under
the oldest supported version (``.venv-compat``, scripts/setup_compat.sh); ``make test`` runs them
under the lock's. A version outside the range is refused at load (``check_transformers``), because
an untested transformers fails in ways that look like model bugs (5.17 with a 5.24-only keyword
silently ignored the cache and crashed later on a ``None``).
"""
from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any

# Keep in step with requirements/runtime.txt and scripts/setup_compat.sh (the floor is tested there).
TRANSFORMERS_MIN = "5.17"
TRANSFORMERS_BELOW = "5.25"
TRANSFORMERS_RANGE = f">={TRANSFORMERS_MIN},<{TRANSFORMERS_BELOW}"
_PROCESSOR_KEYS = ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens", "image_token")


def supported(version: str) -> bool:
    """Whether a transformers version string lies inside TRANSFORMERS_RANGE (dev/rc builds of it count)."""
    from packaging.version import Version

    release = Version(Version(version).base_version)
    return Version(TRANSFORMERS_MIN) <= release < Version(TRANSFORMERS_BELOW)


def installed_version() -> str:
    import transformers

    return str(transformers.__version__)


def check_transformers(version: str | None = None) -> str:
    """The installed transformers version; ValueError naming the range when it is outside it."""
    if version is None:
        version = installed_version()
    if not supported(version):
        raise ValueError(
            f"transformers {version} is not supported by the chatspot runtime (supported: transformers"
            f"{TRANSFORMERS_RANGE}, requirements/runtime.txt); install one with "
            f"pip install 'transformers{TRANSFORMERS_RANGE}'"
        )
    return version


@functools.lru_cache(maxsize=None)
def _cache_keyword(forward: Any) -> str:
    parameters = inspect.signature(forward).parameters
    if "cache" in parameters:
        return "cache"
    if "past_key_values" in parameters:
        return "past_key_values"
    raise TypeError(f"{forward.__qualname__} takes neither 'cache' nor 'past_key_values'")


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for this module's forward, whichever name the installed transformers uses."""
    return {_cache_keyword(type(module).forward): cache}


def new_dynamic_cache(text_config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=text_config)


def fill_cache(cache: Any, layers_kv: Any) -> None:
    """Write per-layer (keys, values) into an empty cache through the public ``Cache.update``."""
    for index, (keys, values) in enumerate(layers_kv):
        cache.update(keys, values, index)


def image_processor_settings(path: Path) -> dict[str, Any]:
    from chatspot_ros.runtime.loading import read_processor_config

    settings, _ = read_processor_config(path)
    return settings


def load_image_processor(path: Path, settings: dict[str, Any] | None = None) -> Any:
    """The checkpoint's image processor. ``AutoImageProcessor`` first; where it refuses (transformers
    5.17 asks for torchvision to build CLIP's, even though a PIL one exists), the PIL class of the
    saved ``image_processor_type`` built from the saved settings."""
    import transformers

    try:
        return transformers.AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    except ImportError as err:
        settings = settings if settings is not None else image_processor_settings(path)
        name = str(settings.get("image_processor_type", "CLIPImageProcessor")).removesuffix("Fast")
        cls = getattr(transformers, f"{name}Pil", None)
        if cls is None:
            raise ValueError(f"{path}: transformers {transformers.__version__} cannot build {name} here ({err}) "
                             "and has no PIL variant of it; install torchvision") from err
        kwargs = {k: v for k, v in settings.items() if k not in ("image_processor_type", "processor_class")}
        return cls(**kwargs)


def load_processor(path: Path) -> Any:
    """A ``LlavaProcessor`` for the checkpoint (the reference the bench and tests compare with), built from
    its parts when ``AutoProcessor`` refuses the image processor (see :func:`load_image_processor`)."""
    import transformers

    try:
        return transformers.AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except ImportError:
        pass
    extra: dict[str, Any] = {}
    processor_file = path / "processor_config.json"
    if processor_file.is_file():
        saved = json.loads(processor_file.read_text(encoding="utf-8"))
        extra = {k: saved[k] for k in _PROCESSOR_KEYS if k in saved}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return transformers.LlavaProcessor(image_processor=load_image_processor(path), tokenizer=tokenizer, **extra)
