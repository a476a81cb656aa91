"""Page logic with Streamlit's AppTest (no browser)."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCORE_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(ROOT)
    return tmp_path


def _app():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    return at


def test_segment_page_renders_sample_with_tables():
    at = _app()
    assert not at.exception, at.exception
    assert at.title[0].value == "Segment & compare"
    assert at.selectbox(key="sc_sample").value.startswith("phantom_ct_512")
    tables = at.dataframe
    assert len(tables) >= 1
    per_class = tables[0].value
    assert list(per_class["class"]) == ["organ", "lesion"]
    assert per_class["refined area (mm²)"].notna().all()  # DICOM spacing known


def test_switch_views_and_refinement_controls():
    at = _app()
    for view in ("Contours", "Side by side", "Difference"):
        at.radio(key="sc_view").set_value(view).run()
        assert not at.exception, at.exception
    for kind in ("entropy", "MC dropout"):
        at.selectbox(key="sc_unc").set_value(kind).run()
        assert not at.exception, at.exception
        assert not at.warning or all("Dropout" not in w.value for w in at.warning)  # the default model has dropout
    at.radio(key="sc_view").set_value("Instances").run()
    assert not at.exception, at.exception
    assert any("Instances per class" in m.value for m in at.markdown)
    at.checkbox(key="sc_crf_on").uncheck().run()
    at.checkbox(key="sc_open_on").check().run()
    at.slider(key="sc_open_k").set_value(7).run()
    assert "open 7px" in at.caption[-1].value or any("open 7px" in c.value for c in at.caption)
    assert not at.exception


def test_bad_upload_shows_clear_error_not_traceback():
    at = _app()
    at.radio(key="sc_source").set_value("Upload").run()
    assert not at.exception
    assert any("Upload one or more scans" in i.value for i in at.info)


def test_correct_and_finetune_pages_after_segment():
    at = _app()
    at.switch_page("pages/correct.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Correct"
    assert at.button(key="sc_save").disabled  # no reviewer name yet
    assert any("Enter your name" in w.value for w in at.warning)
    at.switch_page("pages/finetune.py").run()
    assert not at.exception, at.exception
    assert any("No saved corrections" in i.value for i in at.info)
    assert at.button(key="sc_ft_go").disabled


def test_review_page_needs_a_name_and_valid_session_input():
    at = _app()
    at.switch_page("pages/review.py").run()
    assert not at.exception, at.exception
    assert any("Enter your name" in w.value for w in at.warning)
    at.session_state["sc_reviewer"] = "Dr T"
    at.run()
    assert not at.exception, at.exception
    at.button(key="sc_rv_start").click().run()  # no session name
    assert any("Give the session a name" in e.value for e in at.error)
    at.text_input(key="sc_rv_name").input("t")
    at.radio(key="sc_rv_source").set_value("Upload")
    at.button(key="sc_rv_start").click().run()  # upload chosen, nothing uploaded
    assert any("Upload at least one scan" in e.value for e in at.error)
    assert not at.exception
