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
    assert any("open 7px" in c.value and "CRF off" in c.value for c in at.caption)
    assert not at.exception


def test_measurements_do_not_depend_on_the_display_window():
    """The refined areas of the same scan are identical whatever window is chosen (the CRF sees the model's
    normalisation, not the display)."""
    at = _app()
    areas = {}
    for choice in ("file default", "lung", "bone", "manual", "auto"):
        key = next(s.key for s in at.selectbox if s.key and s.key.startswith("sc_window_"))
        at.selectbox(key=key).set_value(choice).run()
        assert not at.exception, at.exception
        table = at.dataframe[0].value
        areas[choice] = list(table["refined area (px)"]) + list(table["raw area (px)"])
    assert len({tuple(v) for v in areas.values()}) == 1, areas


def test_ct_presets_only_for_hounsfield_units():
    at = _app()
    key = next(s.key for s in at.selectbox if s.key and s.key.startswith("sc_window_"))
    assert "lung" in at.selectbox(key=key).options  # the CT DICOM
    at.selectbox(key="sc_sample").set_value("phantom_ct_256_hu+1024.png").run()
    key = next(s.key for s in at.selectbox if s.key and s.key.startswith("sc_window_"))
    assert "lung" not in at.selectbox(key=key).options and at.selectbox(key=key).value == "auto"
    assert any("not known to be HU" in c.value for c in at.caption)


def test_model_card_warns_outside_its_domain():
    at = _app()
    assert not [w for w in at.warning if "synthetic phantoms only" in w.value]  # a phantom sample
    at.selectbox(key="sc_sample").set_value("brain1_mr.nii.gz").run()
    assert not at.exception, at.exception
    assert any("synthetic phantoms only" in w.value for w in at.warning)


def test_bad_upload_shows_clear_error_not_traceback():
    at = _app()
    at.radio(key="sc_source").set_value("Upload").run()
    assert not at.exception
    assert any("Upload one or more scans" in i.value for i in at.info)


def test_correct_and_finetune_pages_after_segment():
    at = _app()
    at.switch_page("app_pages/correct.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Correct"
    assert any("Editing:** phantom_ct_512.dcm" in m.value for m in at.markdown)
    assert at.button(key="sc_save").disabled  # no reviewer name yet
    assert any("Enter your name" in w.value for w in at.warning)
    at.session_state["sc_reviewer"] = "Dr T"
    at.run()
    assert at.button(key="sc_save").disabled  # nothing changed yet
    assert any("Nothing to save yet" in c.value for c in at.caption)
    at.switch_page("app_pages/finetune.py").run()
    assert not at.exception, at.exception
    assert any("No saved corrections" in i.value for i in at.info)
    assert at.button(key="sc_ft_go").disabled


def test_review_page_needs_a_name_and_valid_session_input():
    at = _app()
    at.switch_page("app_pages/review.py").run()
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


def test_instances_page_edits_saves_coco_and_fine_tunes_in_a_background_job():
    import streamlit as st

    st.cache_resource.clear()  # a workspace and job manager on this test's data dir
    at = _app()
    at.selectbox(key="sc_sample").set_value("instances test/test_0000.png").run()
    at.session_state["sc_reviewer"] = "Dr I"
    at.run()
    at.switch_page("app_pages/instances.py").run()
    assert not at.exception, at.exception
    n0 = int(next(c.value for c in at.caption if c.value.endswith(("objects · 0 edits", "object · 0 edits"))).split()[0])
    assert n0 >= 2
    at.radio(key="sc_ic_op").set_value("Delete").run()
    at.multiselect(key="sc_ic_del").set_value([1]).run()
    at.button(key="sc_ic_del_go").click().run()
    assert any(c.value.startswith(f"{n0 - 1} object") for c in at.caption)
    at.radio(key="sc_ic_op").set_value("Merge").run()
    first = at.multiselect(key="sc_ic_merge").options[:2]
    at.multiselect(key="sc_ic_merge").set_value([int(v) for v in first]).run()
    at.button(key="sc_ic_merge_go").click().run()
    assert any(c.value.startswith(f"{n0 - 2} object") and "2 edits" in c.value for c in at.caption)
    at.button(key="sc_ic_save").click().run()
    assert not at.exception, at.exception
    assert any(f"Saved {n0 - 2} object" in s.value for s in at.success)

    # fine-tuning is a job of the server's job manager, shown in the page's queue, with Cancel
    at.button(key="sc_ic_ft").click().run()
    assert not at.exception, at.exception
    from ui import resources

    job = resources.jobs().jobs()[0]
    assert job.spec["kind"] == "instances" and job.created_by == "Dr I" and len(job.spec["correction_ids"]) == 1
    assert job.spec["settings"] == {"pixel_scale": at.slider(key="sc_ic_scale").value}
    rows = next(d.value for d in at.dataframe if "started by" in d.value.columns)  # the jobs table
    assert list(rows["started by"]) == ["Dr I"]
    at.button(key=f"sc_job_cancel_{job.id}").click().run()
    assert resources.jobs().wait(job.id, timeout=120).state == "cancelled"
    assert resources.instance_workspace().versions().keys() == {"shipped"}


def test_finetune_page_queues_a_background_job_and_offers_its_candidate(data_dir):
    """A job started on the page runs in the server's job manager; the queue and the candidate show its result."""
    import streamlit as st

    from segcore.labels import load_mask
    from segcore.store import Workspace

    st.cache_resource.clear()  # a workspace and job manager on this test's data dir
    ws = Workspace(data_dir, default_model_dir=ROOT / "sample_data" / "models" / "default")
    name = sorted((ROOT / "sample_data/phantom/train/images").iterdir())[0].name
    scan = (ROOT / "sample_data/phantom/train/images" / name).read_bytes()
    mask = load_mask(ROOT / "sample_data/phantom/train/masks" / name)
    c = ws.save_correction(scan, name, mask, author="Dr T", model_version="v1", source="refined",
                           class_names=("background", "organ", "lesion"))
    at = _app()
    at.switch_page("app_pages/finetune.py").run()
    assert not at.exception, at.exception
    assert at.multiselect(key="sc_ft_train").value == [c.id]
    at.checkbox(key="sc_ft_manual").check().run()
    at.number_input(key="sc_ft_epochs").set_value(2)
    at.selectbox(key="sc_ft_lr").set_value(1e-5)
    at.session_state["sc_reviewer"] = "Dr T"
    at.run()
    assert not at.button(key="sc_ft_go").disabled
    at.button(key="sc_ft_go").click().run()
    assert not at.exception, at.exception
    assert any("queued" in s.value for s in at.success), [s.value for s in at.success]
    from ui import resources

    job = resources.jobs().jobs()[0]
    assert job.created_by == "Dr T" and job.spec["settings"] == {"epochs": 2, "learning_rate": 1e-5}
    done = resources.jobs().wait(job.id, timeout=300)
    assert done.state == "done", (done.state, done.error)
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="sc_ft_cand_pick").value == "v2"
    assert at.button(key="sc_promote") is not None
    rows = next(d.value for d in at.dataframe if "started by" in d.value.columns)  # the jobs table
    assert list(rows["state"]) == ["done"] and list(rows["started by"]) == ["Dr T"]


def test_finetune_page_class_editor_offers_only_corrections_that_fit(data_dir):
    """Renaming organ to nucleus and removing lesion: a correction with lesion pixels is not offered, and says why."""
    import streamlit as st

    from segcore.labels import load_mask
    from segcore.store import Workspace

    st.cache_resource.clear()
    ws = Workspace(data_dir, default_model_dir=ROOT / "sample_data" / "models" / "default")
    name = "train_0000.png"
    mask = load_mask(ROOT / "sample_data/phantom/train/masks" / name)
    assert mask.max() == 2
    ws.save_correction((ROOT / "sample_data/phantom/train/images" / name).read_bytes(), name, mask, author="Dr T",
                       model_version="v1", source="refined", class_names=("background", "organ", "lesion"))
    at = _app()
    at.switch_page("app_pages/finetune.py").run()
    assert not [c for c in at.caption if "Not offered" in c.value]
    at.session_state["sc_ft_classes"] = {"edited_rows": {1: {"class": "nucleus"}}, "added_rows": [],
                                         "deleted_rows": [2]}
    at.run()
    assert not at.exception, at.exception
    assert [c.value for c in at.caption if "Not offered" in c.value][0].endswith(
        "it has label 2 (lesion); the new class set has 2 classes (background, nucleus).")
    assert at.multiselect(key="sc_ft_train").value == []
    at.session_state["sc_ft_classes"] = {"edited_rows": {2: {"colour": "red"}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert any("colour 'red' is not #rrggbb" in e.value for e in at.error)


def test_review_records_the_sessions_model_and_verifies_the_audit_on_demand(data_dir):
    """A session made by another model version keeps that version in the verdict and its correction; the audit
    trail is verified when asked (it reads every row) and names a tampered row."""
    import sqlite3

    import streamlit as st

    from segcore.models import load_model
    from segcore.review import ReviewStore, queue_scan
    from segcore.store import Workspace

    st.cache_resource.clear()
    model, config = load_model(ROOT / "sample_data" / "models" / "default")
    store = ReviewStore(data_dir=data_dir)
    sid = store.create_session("older model", "Dr T", "v0-retired", {})
    scan = sorted((ROOT / "sample_data/phantom/test/images").iterdir())[0]
    queue_scan(store, sid, scan.read_bytes(), scan.name, model, config, who="Dr T")
    at = _app()
    at.session_state["sc_reviewer"] = "Dr T"
    at.switch_page("app_pages/review.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="sc_rv_session").value == sid
    assert any("v0-retired" in w.value and "no longer in the registry" in w.value for w in at.warning)
    at.radio(key=f"sc_rv_verdict_{store.cases(sid, 'upload')[0].id}").set_value("accept").run()
    at.button(key=f"sc_rv_submit_{store.cases(sid, 'upload')[0].id}").click().run()
    assert not at.exception, at.exception
    assert [v["verdict"] for v in store.verdicts(sid)] == ["accept"]
    saved = Workspace(data_dir, default_model_dir=ROOT / "sample_data" / "models" / "default").list_corrections()
    assert [c.model_version for c in saved] == ["v0-retired"]

    at.button(key="sc_rv_verify").click().run()
    assert any("Verified: all" in s.value for s in at.success), [s.value for s in at.success]
    con = sqlite3.connect(data_dir / "review.db")
    con.execute("UPDATE verdicts SET comment = 'edited afterwards'")
    con.commit()
    con.close()
    at.button(key="sc_rv_verify").click().run()
    assert any("does not verify" in e.value for e in at.error), [e.value for e in at.error]


def test_correct_offers_previous_corrections_of_the_same_scan_only(data_dir):
    """'Last saved correction' is matched by the scan's content (and series), not by a file name another scan may
    share."""
    import numpy as np
    import streamlit as st

    from segcore.io import load_scan
    from segcore.store import Workspace

    st.cache_resource.clear()
    ws = Workspace(data_dir, default_model_dir=ROOT / "sample_data" / "models" / "default")
    demo = ROOT / "sample_data" / "demo" / "phantom_ct_512.dcm"
    shape = load_scan(demo).pixels.shape[-2:]
    mask = np.zeros(shape, np.uint8)
    mask[100:140, 100:160] = 1
    ws.save_correction(b"other bytes, same name", demo.name, mask, author="Dr T", model_version="v1",
                       source="refined")
    at = _app()
    at.switch_page("app_pages/correct.py").run()
    assert not at.exception, at.exception
    assert not any(o.startswith("last saved correction") for o in at.radio(key="sc_start").options)
    ws.save_correction(demo.read_bytes(), demo.name, mask, author="Dr T", model_version="v1", source="refined")
    at.run()
    assert any(o.startswith("last saved correction") for o in at.radio(key="sc_start").options)
    at.radio(key="sc_start").set_value("previous").run()
    assert not at.exception, at.exception


def test_refinement_settings_survive_another_page_and_another_scan():
    """Widget state is dropped while a page is not shown: the controls start from the settings in use."""
    at = _app()
    at.checkbox(key="sc_crf_on").uncheck().run()
    at.checkbox(key="sc_open_on").check().run()
    at.slider(key="sc_open_k").set_value(7).run()
    at.switch_page("app_pages/correct.py").run()
    assert not at.exception, at.exception
    assert any("open 7px" in m.value and "CRF off" in m.value for m in at.markdown)  # what Correct edits
    at.switch_page("app_pages/segment.py").run()
    assert not at.exception, at.exception
    assert not at.checkbox(key="sc_crf_on").value and at.checkbox(key="sc_open_on").value
    assert at.slider(key="sc_open_k").value == 7
    at.selectbox(key="sc_sample").set_value("phantom test/test_0000.png").run()
    assert any("open 7px" in c.value and "CRF off" in c.value for c in at.caption)


def test_click_canvas_sends_the_scan_as_a_media_url_and_refuses_markup_as_a_colour():
    def page(root):
        import sys

        sys.path.insert(0, root)
        import numpy as np
        import streamlit as st

        from ui.click_canvas import click_canvas

        img = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
        colour = st.session_state.get("colour", "#2ecc71")
        click_canvas(img, None, key="t", title="t", marks=[(1, 2, colour)], on_click=print, on_box=print)

    at = AppTest.from_function(page, args=(str(ROOT),), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    data = at.get("bidi_component")[0].proto.json
    assert '/media/' in data and '"base": "data:' not in data  # the scan travels as a URL, not inline
    assert '"marks": [[1, 2, "#2ecc71"]]' in data
    at.session_state["colour"] = '"/><script>alert(1)</script>'
    at.run()
    assert at.exception and "Mark colours must be" in at.exception[0].message
