"""Train the click network with the iterative click simulator (``python -m segcore train-interactive``).

Each training sample is one object from a pool (synthetic scenes of
:mod:`segcore.interactive.synth`, phantoms from :func:`segcore.phantom.make_phantom`
and :func:`segcore.instances.data.make_instance_phantom` with seeds disjoint from the
committed sets, and the stardist training sub-volume of
:func:`segcore.interactive.data.stardist_split`), framed as ``segment()`` frames it:

* a click prompt (75 %): the first click at the object's interior-most point or at a
  random interior point; the window is the one-click window, the window after
  expansion, or the window around the object as later clicks see it (jittered);
* a box prompt (25 %): the object's box with jittered sides; the window around it.

Then, per batch, 0-3 rounds of the simulator run the current network (no gradient)
and add the next click from its error (positive for a miss, negative for a false
region), feeding the prediction back as the previous mask, as RITM trains. The loss
is binary cross-entropy plus soft Dice on the final round.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import cv2
import numpy as np

from .encode import click_maps, encode
from .geometry import Window, crop, mask_bbox, window_for_prompt
from .model import ClickModel, InteractiveConfig, build_click_unet
from .segment import _snap_clicks
from .simulate import next_click

__all__ = ["TrainSettings", "build_pool", "train_interactive"]


@dataclasses.dataclass
class TrainSettings:
    steps: int = 3000
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    synth_scenes: int = 700
    phantoms: int = 120
    instance_phantoms: int = 80
    box_fraction: float = 0.25
    max_sim_rounds: int = 3
    init: str | None = None  # continue from this model folder's weights (a second, fine-tuning stage)
    source_weights: dict = dataclasses.field(
        default_factory=lambda: {"synth": 0.45, "phantom": 0.2, "instances": 0.1, "stardist": 0.25})
    large_synth_scenes: int = 0  # synthetic scenes upsampled 2x (objects up to ~90 px radius)
    large_phantoms: int = 0  # phantoms generated at 512x512 (lesions and organ twice as large)
    boundary_weight: float = 0.0  # extra BCE weight on the pixels within 2 network px of the object's border
    radiomics_cases: tuple[str, ...] = ()  # real lesion cases trained on (the others stay held out), source "radiomics"
    config_overrides: dict = dataclasses.field(default_factory=dict)  # InteractiveConfig fields to change

    def __post_init__(self) -> None:
        from .data import check_radiomics_cases

        self.radiomics_cases = check_radiomics_cases(self.radiomics_cases)
        if self.radiomics_cases and not self.source_weights.get("radiomics"):
            raise ValueError("radiomics_cases adds the source 'radiomics' to the pool, but source_weights gives it no "
                             f"weight ({self.source_weights}), so it would never be sampled: add e.g. "
                             '"radiomics": 0.2.')


def _objects_from_ids(image, ids, source, min_area=12):
    out = []
    for i in np.unique(ids):
        if i == 0:
            continue
        m = ids == i
        if m.sum() >= min_area:
            out.append((image, m, source))
    return out


def build_pool(settings: TrainSettings, shared_data: str | Path | None) -> dict[str, list]:
    """Training objects per source: ``{source: [(image, mask), ...]}`` (deterministic for the settings)."""
    from ..instances.data import make_instance_phantom
    from ..phantom import make_phantom
    from .synth import make_scene

    pool: dict[str, list] = {"synth": [], "phantom": [], "instances": [], "stardist": [], "synth_large": [],
                             "phantom_large": [], "radiomics": []}
    for i in range(settings.synth_scenes):
        img, ids = make_scene(5_000_000 + settings.seed * 100_000 + i)
        pool["synth"] += [(o[0], o[1]) for o in _objects_from_ids(img, ids, "synth")]
    for i in range(settings.large_synth_scenes):  # seeds after the ones above (fewer than 100,000 scenes)
        img, ids = make_scene(5_000_000 + settings.seed * 100_000 + 50_000 + i)
        img = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
        ids = cv2.resize(ids, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        pool["synth_large"] += [(o[0], o[1]) for o in _objects_from_ids(img, ids, "synth", min_area=200)]
    for i in range(settings.large_phantoms):
        img, lab = make_phantom(7_000_000 + settings.seed * 100_000 + 50_000 + i, size=512)
        n, cc = cv2.connectedComponents((lab == 2).astype(np.uint8))
        ids = np.where(lab == 1, n + 1, cc)
        pool["phantom_large"] += [(o[0], o[1]) for o in _objects_from_ids(img + 1024.0, ids, "phantom", 50)]
    for i in range(settings.phantoms):  # committed sample set uses seeds 202_600_000 + i (i < 170)
        img, lab = make_phantom(7_000_000 + settings.seed * 100_000 + i)
        img = img + 1024.0  # stored like the PNGs (HU + 1024)
        n, cc = cv2.connectedComponents((lab == 2).astype(np.uint8))
        ids = np.where(lab == 1, n + 1, cc)  # lesion components and the organ as objects
        pool["phantom"] += [(o[0], o[1]) for o in _objects_from_ids(img, ids, "phantom")]
    for i in range(settings.instance_phantoms):  # committed instance set uses seeds around 4242
        img, ids = make_instance_phantom(8_000_000 + settings.seed * 100_000 + i)
        pool["instances"] += [(o[0], o[1]) for o in _objects_from_ids(img, ids, "instances")]
    if shared_data is not None and (Path(shared_data) / "stardist" / "img3d.tif").is_file():
        from .data import stardist_split

        planes, _ = stardist_split(Path(shared_data) / "stardist")
        for img, ids in planes:
            pool["stardist"] += [(o[0], o[1]) for o in _objects_from_ids(img, ids, "stardist", min_area=15)]
    if settings.radiomics_cases:
        from .data import radiomics_objects

        if shared_data is None or not (Path(shared_data) / "radiomics").is_dir():
            raise FileNotFoundError(f"radiomics_cases {settings.radiomics_cases} need the radiomics folder in "
                                    f"shared_data (got {shared_data}).")
        pool["radiomics"] = [(img, m) for img, m, meta in radiomics_objects(Path(shared_data) / "radiomics",
                                                                            cases=settings.radiomics_cases)]
    return {k: v for k, v in pool.items() if v}


def _augment(image, mask, rng):
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    image = np.ascontiguousarray(image, np.float32)
    if rng.random() < 0.2:
        image = -image  # polarity: objects may be brighter or darker than their surroundings
    if rng.random() < 0.2:
        image = image + rng.standard_normal(image.shape).astype(np.float32) * float(np.std(image)) * rng.uniform(
            0.02, 0.15)
    return image, np.ascontiguousarray(mask)


def _first_click(mask, rng):
    d = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    if rng.random() < 0.5:
        r, c = np.unravel_index(int(np.argmax(d)), d.shape)
    else:
        rr, cc = np.nonzero(d >= 0.3 * d.max())
        k = int(rng.integers(len(rr)))
        r, c = rr[k], cc[k]
    return float(r), float(c)


def _jitter(window: Window, rng, amount: float) -> Window:
    side = window.side * float(np.exp(rng.uniform(-amount, amount)))
    return Window(window.center_r + rng.uniform(-amount, amount) * window.side / 2,
                  window.center_c + rng.uniform(-amount, amount) * window.side / 2, side, window.size)


def make_sample(image, mask, rng, cfg: InteractiveConfig, box_fraction: float):
    """One training prompt: ``(encoding N,N,6, gt N,N bool, net-space clicks, net-space box or None, scale)``."""
    image, mask = _augment(image, mask, rng)
    shape = image.shape
    kw = dict(size=cfg.net_size, min_side=cfg.min_side, margin=cfg.margin)
    if rng.random() < box_fraction:
        r0, c0, r1, c1 = mask_bbox(mask)
        ext = max(r1 - r0, c1 - c0) + 1
        j = lambda: rng.uniform(-0.08, 0.15) * ext + rng.uniform(-1, 2)  # noqa: E731 - loose, rarely tight
        box = (max(0.0, r0 - j()), max(0.0, c0 - j()), min(shape[0] - 1.0, r1 + j()), min(shape[1] - 1.0, c1 + j()))
        box = (min(box[0], r0), min(box[1], c0), max(box[2], r1), max(box[3], c1)) if rng.random() < 0.7 else box
        window = window_for_prompt(shape, [], box=box, **kw)
        clicks = []
    else:
        box = None
        r, c = _first_click(mask, rng)
        clicks = [(r, c, True)]
        u = rng.random()
        window = window_for_prompt(shape, [(r, c)], **kw)
        if u < 0.5:  # as later clicks (or an expanded first click) see it: framed around the object
            window = _jitter(window_for_prompt(shape, [(r, c)], previous=mask, **kw), rng, 0.25)
        elif u < 0.6:
            window = _jitter(window, rng, 0.3)
    x = encode(image, window, clicks, box=box, click_radius=cfg.click_radius, percentiles=cfg.percentiles)
    gt = crop(mask.astype(np.float32), window) >= 0.5
    ii, jj = window.to_net([c[0] for c in clicks], [c[1] for c in clicks])
    net_clicks = [(float(a), float(b), True) for a, b in zip(ii, jj)]
    net_box = None
    if box is not None:
        net_box = x[..., 5] > 0
    return x, gt, net_clicks, net_box, window.scale


def _postprocess(pred, clicks, box_mask):
    if box_mask is not None:
        pred = pred & box_mask
    pos = [(int(round(i)), int(round(j))) for i, j, p in clicks if p]
    n = pred.shape[0]
    pos = [(i, j) for i, j in pos if 0 <= i < n and 0 <= j < n]
    if pos and pred.any():
        _, lab = cv2.connectedComponents(pred.astype(np.uint8), connectivity=8)
        keep = {int(lab[i, j]) for i, j in pos} - {0}
        if keep:
            pred = np.isin(lab, sorted(keep))
    return pred


def simulate_rounds(model: ClickModel, x, gts, clicks, boxes, rounds: int, scales=None):
    """Run ``rounds`` simulator rounds in place on a batch (prediction fed back, one click added per round).

    The fed-back mask is post-processed as :func:`segcore.interactive.segment` does it (box clip, clicked
    components, and with ``click_snap_radius`` the clicks' local threshold; ``scales``: image px per network
    px of each sample, to convert that radius).
    """
    cfg = model.config
    n = cfg.net_size
    for _ in range(rounds):
        probs = model.predict(x)
        for b in range(len(x)):
            pred = _postprocess(probs[b] >= cfg.threshold, clicks[b], boxes[b])
            if cfg.click_snap_radius > 0:
                inside = [(i, j, p) for i, j, p in clicks[b] if 0 <= round(i) < n and 0 <= round(j) < n]
                radius = cfg.click_snap_radius / (scales[b] if scales is not None else 1.0)
                pred = _snap_clicks(pred, probs[b], (0, 0, n, n), inside, radius, cfg.threshold)
            click = next_click(gts[b], pred)
            if click is None:
                continue
            clicks[b].append((float(click[0]), float(click[1]), click[2]))
            x[b, ..., 2:4] = click_maps(clicks[b], cfg.net_size, cfg.click_radius)
            x[b, ..., 4] = pred
    return x


def boundary_weights(gt: np.ndarray, weight: float, width: float = 2.0) -> np.ndarray:
    """``1 + weight`` on the pixels within ``width`` px (Euclidean) of the object's border in ``B,N,N`` masks.

    A pixel is within ``width`` of the border when its distance to the nearest pixel of the other side is at
    most ``width``; the array's edge is no border. Elsewhere (and for empty or full masks) the weight is 1.
    """
    out = np.ones(gt.shape, np.float32)
    for b, m in enumerate(np.asarray(gt, bool)):
        if not m.any() or m.all():
            continue
        m8 = m.astype(np.uint8)
        d_in = cv2.distanceTransform(m8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        d_out = cv2.distanceTransform(1 - m8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        out[b][np.where(m, d_in, d_out) <= width] += weight
    return out


def _loss_fn():
    import tensorflow as tf

    def loss(y, p, w):
        p = tf.clip_by_value(p, 1e-6, 1 - 1e-6)
        bce = -tf.reduce_sum(w * (y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))) / tf.reduce_sum(w)
        inter = tf.reduce_sum(y * p, axis=[1, 2, 3])
        dice = 1 - (2 * inter + 1) / (tf.reduce_sum(y, axis=[1, 2, 3]) + tf.reduce_sum(p, axis=[1, 2, 3]) + 1)
        return bce + tf.reduce_mean(dice)

    return loss


def train_interactive(out_dir: str | Path, settings: TrainSettings | None = None, *,
                      shared_data: str | Path | None = None, config: InteractiveConfig | None = None,
                      log=print) -> ClickModel:
    """Build the pool, train with the click simulator, save the model (and its card) to ``out_dir``."""
    import keras
    import tensorflow as tf

    settings = settings or TrainSettings()
    cfg = dataclasses.replace(config or InteractiveConfig(), **settings.config_overrides)
    keras.utils.set_random_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    t0 = time.perf_counter()
    pool = build_pool(settings, shared_data)
    sources = sorted(pool)
    w = np.array([settings.source_weights.get(s, 0.0) for s in sources])
    w = w / w.sum()
    log(json.dumps({"pool": {s: len(pool[s]) for s in sources}, "seconds": round(time.perf_counter() - t0, 1)}))

    net = build_click_unet(cfg.net_size, cfg.channels, cfg.filters)
    if settings.init:
        parent = ClickModel.load(settings.init)
        net.set_weights(parent.keras_model.get_weights())
        cfg = dataclasses.replace(parent.config, training={}, metrics={}, **settings.config_overrides)
        log(json.dumps({"initialised_from": str(settings.init), "parent_training": parent.config.training.get(
            "settings")}))
    model = ClickModel(net, cfg)
    schedule = keras.optimizers.schedules.CosineDecay(settings.learning_rate, settings.steps, alpha=0.05)
    opt = keras.optimizers.Adam(schedule)
    loss_fn = _loss_fn()

    @tf.function(reduce_retracing=True)
    def step(x, y, wt):
        with tf.GradientTape() as tape:
            p = net(x, training=True)
            loss = loss_fn(y, p, wt)
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return loss

    history = []
    t_train = time.perf_counter()
    running = []
    for it in range(1, settings.steps + 1):
        xs, gts, clicks, boxes, scales = [], [], [], [], []
        for _ in range(settings.batch_size):
            src = sources[int(rng.choice(len(sources), p=w))]
            image, mask = pool[src][int(rng.integers(len(pool[src])))]
            x, gt, cl, bx, sc = make_sample(image, mask, rng, cfg, settings.box_fraction)
            xs.append(x), gts.append(gt), clicks.append(cl), boxes.append(bx), scales.append(sc)
        x = np.stack(xs)
        rounds = int(rng.choice(settings.max_sim_rounds + 1, p=[0.3, 0.3, 0.2, 0.2]
                                if settings.max_sim_rounds == 3 else None))
        warm = settings.init is not None or it > settings.steps // 10
        if rounds and warm:  # let the network learn the first click before feeding it back
            x = simulate_rounds(model, x, gts, clicks, boxes, rounds, scales)
        y = np.stack(gts)[..., None].astype(np.float32)
        wt = boundary_weights(np.stack(gts), settings.boundary_weight)[..., None]
        running.append(float(step(tf.constant(x), tf.constant(y), tf.constant(wt))))
        if it % 100 == 0 or it == 1:
            rec = {"step": it, "loss": round(float(np.mean(running)), 4),
                   "seconds": round(time.perf_counter() - t_train, 1)}
            running = []
            history.append(rec)
            log(json.dumps(rec))
    parent_training = ClickModel.load(settings.init).config.training if settings.init else None
    cfg.training = {"settings": dataclasses.asdict(settings), "pool": {s: len(pool[s]) for s in sources},
                    "seconds": round(time.perf_counter() - t0, 1), "history": history}
    if parent_training:
        cfg.training["parent"] = parent_training
    model = ClickModel(net, cfg)
    model.save(out_dir)
    return model
