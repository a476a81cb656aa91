"""Instance segmentation: a compact Mask R-CNN and its instance-labelled phantom data."""
