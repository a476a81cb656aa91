"""Instance segmentation: a compact Mask R-CNN, its data, training, evaluation and instance corrections.

What a page or script needs (importing this package is cheap; TensorFlow loads with the model):

* ``MaskRCNN.load(folder).detect(image, pixel_scale=...)``: instances in a raw 2-D image of any size.
* ``delete_instance``, ``merge_instances``, ``split_instance``, ``add_instance`` (instance-id maps),
  ``ids_from_masks`` / ``masks_from_ids``: corrections (:mod:`.edit`).
* ``build_coco``, ``save_coco``, ``read_coco``: corrections as COCO with RLE masks (:mod:`.coco`).
* ``fine_tune_instances(model, coco_or_pairs)``: a fine-tuned copy with held-out AP50 before / after
  (:mod:`.train`); promote it only if ``result.promote``.
* ``mask_ap``: COCO mask AP (:mod:`.evaluate`).
"""

from importlib import import_module

__all__ = ["MaskRCNN", "add_instance", "build_coco", "delete_instance", "fine_tune_instances", "ids_from_masks",
           "mask_ap", "masks_from_ids", "merge_instances", "read_coco", "save_coco", "split_instance"]

_WHERE = {"MaskRCNN": "maskrcnn", "fine_tune_instances": "train", "mask_ap": "evaluate", "build_coco": "coco",
          "save_coco": "coco", "read_coco": "coco", "add_instance": "edit", "delete_instance": "edit",
          "ids_from_masks": "edit", "masks_from_ids": "edit", "merge_instances": "edit", "split_instance": "edit"}


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
