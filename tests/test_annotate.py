import numpy as np

from segcore.annotate import apply_strokes, class_color, color_to_class
from segcore.viz import PALETTE


def _expected_line(shape, p0, p1, radius):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    px, py = xx + 0.5, yy + 0.5
    a, b = np.array(p0, float), np.array(p1, float)
    d = b - a
    t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / (d @ d), 0, 1)
    return (px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 <= radius**2


def test_stroke_maps_to_exact_pixels_when_image_is_larger_than_canvas():
    # image 600 x 900 shown on a 300 x 450 canvas: 2 image pixels per canvas pixel
    mask = np.zeros((600, 900), np.uint8)
    stroke = {"type": "path", "stroke": class_color(2, PALETTE), "strokeWidth": 4, "fill": None,
              "path": [["M", 100, 50], ["L", 200, 50]]}
    out = apply_strokes(mask, [stroke], 2.0, PALETTE)
    expected = _expected_line(mask.shape, (200, 100), (400, 100), 4.0)
    np.testing.assert_array_equal(out == 2, expected)
    assert out[100, 300] == 2 and out[95, 300] == 0 and out[96, 300] == 2
    assert mask.sum() == 0  # input untouched


def test_non_square_scale_and_rect_and_polygon():
    mask = np.zeros((100, 300), np.uint8)
    rect = {"type": "rect", "left": 10, "top": 5, "width": 20, "height": 10, "fill": class_color(1, PALETTE),
            "stroke": class_color(1, PALETTE), "scaleX": 1, "scaleY": 1}
    out = apply_strokes(mask, [rect], (0.5, 1.5), PALETTE)  # rows x0.5, cols x1.5
    rr, cc = np.nonzero(out == 1)
    assert (rr.min(), rr.max(), cc.min(), cc.max()) == (2, 6, 15, 44)  # centres strictly inside y in (2.5, 7.5)
    tri = {"type": "path", "stroke": class_color(2, PALETTE), "fill": class_color(2, PALETTE), "strokeWidth": 1,
           "path": [["M", 0, 0], ["L", 40, 0], ["L", 0, 40], ["z"]]}
    out = apply_strokes(np.zeros((40, 40), np.uint8), [tri], 1.0, PALETTE)
    yy, xx = np.mgrid[0:40, 0:40]
    np.testing.assert_array_equal(out == 2, (xx + 0.5) + (yy + 0.5) < 40)


def test_eraser_and_order_and_unknown_colour():
    mask = np.ones((20, 20), np.uint8)
    erase = {"type": "path", "stroke": "#ffffff", "strokeWidth": 2, "path": [["M", 0, 10], ["L", 20, 10]]}
    junk = {"type": "path", "stroke": "#123456", "strokeWidth": 20, "path": [["M", 0, 0], ["L", 20, 20]]}
    out = apply_strokes(mask, [junk, erase], 1.0, PALETTE, eraser_color="#ffffff")
    assert (out[9:11] == 0).all() and out[5, 5] == 1 and out[15, 15] == 1


def test_colour_parsing():
    assert color_to_class(class_color(1, PALETTE), PALETTE) == 1
    r, g, b = PALETTE[2]
    assert color_to_class(f"rgba({r}, {g}, {b}, 0.5)", PALETTE) == 2
    assert color_to_class("not a colour", PALETTE) is None


def test_fabric7_centred_path_placement_and_moved_objects():
    # fabric 7 JSON for a stroke drawn from (60, 60) to (220, 100): origin at the centre
    path = [["M", 60, 60], ["L", 220, 100]]
    obj = {"type": "Path", "originX": "center", "originY": "center", "left": 140, "top": 80, "width": 160,
           "height": 40, "scaleX": 1, "scaleY": 1, "stroke": class_color(1, PALETTE), "strokeWidth": 2,
           "fill": None, "path": path}
    a = apply_strokes(np.zeros((200, 300), np.uint8), [obj], 1.0, PALETTE)
    np.testing.assert_array_equal(a == 1, _expected_line((200, 300), (60, 60), (220, 100), 1.0))
    moved = {**obj, "left": 150, "top": 90}  # dragged by (+10, +10) in edit mode
    b = apply_strokes(np.zeros((200, 300), np.uint8), [moved], 1.0, PALETTE)
    np.testing.assert_array_equal(b == 1, _expected_line((200, 300), (70, 70), (230, 110), 1.0))
    rect = {"type": "Rect", "originX": "center", "originY": "center", "left": 20, "top": 10, "width": 10,
            "height": 4, "fill": class_color(2, PALETTE), "stroke": class_color(2, PALETTE)}
    r = apply_strokes(np.zeros((30, 40), np.uint8), [rect], 1.0, PALETTE)
    rr, cc = np.nonzero(r == 2)
    assert (rr.min(), rr.max(), cc.min(), cc.max()) == (8, 11, 15, 24)


def test_fabric7_polygon_tool_object_is_filled():
    """streamlit-drawable-canvas's polygon tool (fabric 7) sends a 'Polygon' with points; it used to be ignored."""
    obj = {"type": "Polygon", "originX": "center", "originY": "center", "left": 130, "top": 125, "width": 160,
           "height": 150, "fill": class_color(2, PALETTE), "stroke": class_color(2, PALETTE), "strokeWidth": 1,
           "scaleX": 1, "scaleY": 1, "points": [{"x": 50, "y": 50}, {"x": 200, "y": 60}, {"x": 210, "y": 200},
                                                {"x": 60, "y": 190}]}
    out = apply_strokes(np.zeros((300, 300), np.uint8), [obj], 1.0, PALETTE)
    assert out[125, 130] == 2 and out[48, 48] == 0 and out[180, 100] == 2 and out[250, 250] == 0
    import cv2  # independent point-in-polygon test at pixel centres

    poly = np.array([[50, 50], [200, 60], [210, 200], [60, 190]], np.float32).reshape(-1, 1, 2)
    inside, on_edge = np.zeros((300, 300), bool), np.zeros((300, 300), bool)
    for r in range(40, 215):
        for c in range(40, 215):
            d = cv2.pointPolygonTest(poly, (c + 0.5, r + 0.5), True)
            inside[r, c], on_edge[r, c] = d > 0, abs(d) < 1e-3  # centres exactly on an edge may go either way
    np.testing.assert_array_equal((out == 2)[~on_edge], inside[~on_edge])
    assert on_edge.sum() <= 40
    moved = {**obj, "left": 140, "top": 135}  # dragged by (+10, +10)
    out2 = apply_strokes(np.zeros((300, 300), np.uint8), [moved], 1.0, PALETTE)
    np.testing.assert_array_equal(out2[10:, 10:] == 2, out[:-10, :-10] == 2)
