"""Model builders, a name registry, and saving/loading with the config beside the weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import keras

from .encoder_decoder import BACKBONES, build_encoder_decoder
from .unet import build_unet

__all__ = [
    "build_unet",
    "build_encoder_decoder",
    "BACKBONES",
    "MODEL_REGISTRY",
    "get_model",
    "ModelConfig",
    "save_model",
    "load_model",
    "validate_model",
    "ModelFileError",
    "ModelCard",
    "load_card",
    "default_class_colors",
]


class ModelFileError(ValueError):
    """A model folder is missing, corrupt, truncated or does not match its config."""

MODEL_REGISTRY: dict[str, Callable[..., keras.Model]] = {
    "unet": build_unet,
    "unet_wide": lambda **kw: build_unet(**{"base_filters": 64, **kw}),
    "unet_deep": lambda **kw: build_unet(**{"depth": 5, **kw}),
    "encoder_decoder": build_encoder_decoder,
}


def get_model(name: str, **kwargs: Any) -> keras.Model:
    """Build a registered model by name.

    Raises
    ------
    ValueError
        Unknown name; the message lists the valid names.
    """
    if name not in MODEL_REGISTRY:
        raise ValueError(f"Unknown model '{name}'. Valid names: {sorted(MODEL_REGISTRY)}.")
    return MODEL_REGISTRY[name](**kwargs)


@dataclasses.dataclass
class ModelConfig:
    """What travels with the weights: enough to preprocess, predict and display.

    ``normalisation`` is ``{"type": "relative_window", "percentile": 75,
    "width": 400}`` (default: a soft-tissue-wide window centred on the image's
    75th percentile, invariant to offsets such as HU+1024 in PNGs),
    ``{"type": "percentile", "low": 0.5, "high": 99.5}`` or
    ``{"type": "window", "center": c, "width": w}``.
    """

    architecture: str = "unet"
    num_classes: int = 3
    class_names: tuple[str, ...] = ("background", "organ", "lesion")
    input_size: tuple[int, int] = (256, 256)
    channels: int = 1
    normalisation: dict = dataclasses.field(
        default_factory=lambda: {"type": "relative_window", "percentile": 75.0, "offset": 0.0, "width": 400.0})
    builder_kwargs: dict = dataclasses.field(default_factory=dict)
    version: str = "v1"
    parent_version: str | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    trained_on: list = dataclasses.field(default_factory=list)
    created_at: str = ""
    class_colors: tuple[tuple[int, int, int], ...] = ()
    card: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.input_size = tuple(int(s) for s in self.input_size)  # type: ignore[assignment]
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}."
            )
        # config.json files written before class colours existed load with the display palette's colours
        colors = tuple(tuple(int(v) for v in c) for c in (self.class_colors or default_class_colors(self.num_classes)))
        if len(colors) != self.num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
            raise ValueError(f"class_colors must hold one RGB triple in [0, 255] per class ({self.num_classes}). "
                             f"Got {list(self.class_colors)}.")
        self.class_colors = colors  # type: ignore[assignment]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def default_class_colors(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The display palette's colours (:data:`segcore.viz.PALETTE`) for classes ``0..num_classes-1``, cycled.

    >>> default_class_colors(2)
    ((0, 0, 0), (46, 204, 113))
    """
    from ..viz import PALETTE

    return tuple(tuple(int(v) for v in PALETTE[i % len(PALETTE)]) for i in range(int(num_classes)))


@dataclasses.dataclass
class ModelCard:
    """What a person needs to know before trusting a model version (written as ``card.json`` beside it).

    ``classes`` is a list of ``{"index", "name", "color"}`` (taken from ``config.json``, which is the
    authority on classes); ``training_data`` a list of ``{"source", "n_images", "description", "licence"}``;
    ``intended_domain`` e.g. ``{"modalities": ["CT"], "synthetic_only": true, "anatomy": "...", "notes": "..."}``;
    ``metrics`` the evaluation stored with the version (``test`` for the shipped model, ``held_out`` /
    ``baseline_held_out`` for fine-tuned versions); ``fine_tuning`` what :func:`segcore.finetune.adapt` decided.
    """

    name: str = ""
    version: str = ""
    parent_version: str | None = None
    architecture: str = ""
    classes: list = dataclasses.field(default_factory=list)
    training_data: list = dataclasses.field(default_factory=list)
    intended_domain: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    fine_tuning: dict = dataclasses.field(default_factory=dict)
    limitations: str = ""
    created_at: str = ""

    @classmethod
    def from_config(cls, config: ModelConfig) -> ModelCard:
        """A card from ``config.card`` (free fields) completed with the config's classes, metrics and lineage."""
        known = {f.name for f in dataclasses.fields(cls)}
        card = cls(**{k: v for k, v in (config.card or {}).items() if k in known})
        card.version = config.version
        card.parent_version = config.parent_version
        card.architecture = config.architecture
        card.created_at = config.created_at
        card.classes = [{"index": i, "name": n, "color": list(c)}
                        for i, (n, c) in enumerate(zip(config.class_names, config.class_colors))]
        if config.metrics:
            card.metrics = config.metrics
        if not card.training_data and config.trained_on:
            card.training_data = [{"source": str(s)} for s in config.trained_on]
        return card

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_card(model_dir: str | Path) -> ModelCard:
    """The model card of a saved model: ``card.json`` merged with ``config.json`` (classes, metrics, lineage).

    A folder without ``card.json`` (versions saved before cards existed) gets a card built from its config.

    Raises
    ------
    FileNotFoundError
        No ``config.json`` in ``model_dir``.
    ModelFileError
        ``config.json`` or ``card.json`` is not valid JSON of the expected shape.
    """
    model_dir = Path(model_dir)
    cfg_path, card_path = model_dir / "config.json", model_dir / "card.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"No model config in '{model_dir}': expected config.json written by save_model.")
    try:
        config = ModelConfig.from_dict(json.loads(cfg_path.read_text()))
        extra = json.loads(card_path.read_text()) if card_path.is_file() else {}
        if not isinstance(extra, dict):
            raise TypeError(f"card.json holds a {type(extra).__name__}, expected an object")
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"'{model_dir}' has an unreadable config.json or card.json: {exc}") from exc
    config.card = {**extra, **(config.card or {})}
    return ModelCard.from_config(config)


def save_model(model: keras.Model, config: ModelConfig, directory: str | Path) -> Path:
    """Write ``model.keras``, ``config.json`` and ``card.json`` into ``directory`` atomically.

    The files are written to a temporary sibling folder which is then renamed,
    so a crash never leaves a half-written model where a good one was.
    """
    from ..atomic import replaced_dir

    directory = Path(directory)
    with replaced_dir(directory) as tmp:
        model.save(tmp / "model.keras")
        (tmp / "config.json").write_text(config.to_json())
        (tmp / "card.json").write_text(json.dumps(ModelCard.from_config(config).to_dict(), indent=2))
    return directory


def load_model(directory: str | Path, *, compile: bool = False) -> tuple[keras.Model, ModelConfig]:
    """Load a model saved by :func:`save_model` (``safe_mode=True``) and check it against its config.

    Raises
    ------
    FileNotFoundError
        The folder has no ``model.keras`` or ``config.json``.
    ModelFileError
        The model file is corrupt or truncated, the config is unreadable, or the network's input
        channels / number of classes differ from what ``config.json`` says.
    """
    import zipfile

    from .. import losses  # noqa: F401  - registers custom objects

    directory = Path(directory)
    path = directory / "model.keras"
    cfg_path = directory / "config.json"
    if not path.is_file() or not cfg_path.is_file():
        raise FileNotFoundError(
            f"No model in '{directory}': expected model.keras and config.json written by segcore.save_model."
        )
    try:
        config = ModelConfig.from_dict(json.loads(cfg_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"'{cfg_path}' is not a valid model config: {exc}") from exc
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"'{path}' is a corrupt or truncated model file (not a Keras .keras archive); "
                             "re-save or restore the model version.")
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - keras reports broken archives in many ways
        raise ModelFileError(f"'{path}' is a corrupt or truncated model file: {type(exc).__name__}: {exc}") from exc
    validate_model(model, config, where=str(directory))
    return model, config


def validate_model(model: keras.Model, config: ModelConfig, where: str = "model") -> None:
    """Raise :class:`ModelFileError` if the network's input channels or classes differ from ``config``."""
    try:
        channels = int(model.inputs[0].shape[-1])
        classes = int(model.outputs[0].shape[-1])
    except (AttributeError, IndexError, TypeError) as exc:
        raise ModelFileError(f"{where}: cannot read the network's input/output shape: {exc}") from exc
    if channels != config.channels or classes != config.num_classes:
        raise ModelFileError(
            f"{where}: the network takes {channels} input channel(s) and predicts {classes} class(es), but its "
            f"config.json says {config.channels} channel(s) and {config.num_classes} class(es) "
            f"{list(config.class_names)}.")
