"""Sign-in end to end: the app behind a mock OpenID Connect provider on loopback, driven in headless Chromium.

Two users sign in in two browser contexts and record verdicts: the stored reviewer ids are the token subjects; a
URL parameter no longer changes identity; a reviewer cannot promote a model (the page refuses and so does the
library); signing out ends the session; a tampered session cookie is refused.
"""

import re

import pytest

from segcore.auth import Identity, PermissionDenied
from segcore.review import ReviewStore

from e2e_support import ARTIFACTS, ROOT, free_port, no_exception, streamlit_app, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
_idle, _no_exception = wait_idle, no_exception


@pytest.fixture(scope="module")
def oidc():
    from oidc_provider_mock import User, run_server_in_thread

    users = [User(sub="alice-1234", claims={"name": "Alice Adams", "email": "alice@example.org",
                                            "groups": ["radiology"]}),
             User(sub="bob-5678", claims={"name": "Bob Brown", "email": "bob@example.org",
                                          "groups": ["radiology"]}),
             User(sub="carol-9999", claims={"name": "Carol Chief", "email": "carol@example.org",
                                            "groups": ["segcore-admins"]})]
    with run_server_in_thread(user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def secure_app(oidc, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    port = free_port()
    secrets = tmp / "secrets.toml"
    secrets.write_text(f"""
[auth]
redirect_uri = "http://localhost:{port}/oauth2callback"
cookie_secret = "{'s' * 48}"
client_id = "segcore"
client_secret = "segcore-secret"
server_metadata_url = "{oidc}/.well-known/openid-configuration"

[segcore.roles]
claim = "groups"
admins = []
default = "annotator"
[segcore.roles.map]
radiology = "reviewer"
segcore-admins = "admin"
""")
    with streamlit_app(tmp / "data", host="localhost", port=port, extra_args=("--secrets.files", str(secrets))) as url:
        yield url, tmp / "data"


def _sign_in(page, url, sub):
    page.goto(url)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_placeholder("sub").first.fill(sub)
    page.get_by_role("button", name="Authorize").click()
    page.get_by_text(re.compile("Signed in as")).wait_for(timeout=120_000)
    _idle(page)


def _no_exception(page):
    errs = page.locator("[data-testid='stException']")
    assert errs.count() == 0, errs.all_inner_texts()


def test_two_signed_in_reviewers_roles_sign_out_and_tampering(secure_app, browser):
    url, data_dir = secure_app
    ARTIFACTS.mkdir(exist_ok=True)
    ctx_a = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx_b = browser.new_context(viewport={"width": 1400, "height": 1000})
    a, b = ctx_a.new_page(), ctx_b.new_page()

    a.goto(url)
    a.get_by_role("button", name="Sign in").wait_for(timeout=60_000)  # nothing without signing in
    assert a.get_by_text("Segment & compare").count() == 0
    a.screenshot(path=str(ARTIFACTS / "20_sign_in.png"), full_page=True)
    _sign_in(a, url, "alice-1234")
    assert a.get_by_text("Alice Adams").count() >= 1 and a.get_by_text("Local mode").count() == 0
    _sign_in(b, url, "bob-5678")

    # Alice starts a session (reviewer role from the 'radiology' group); both record a verdict on the first case
    a.goto(url + "/review?reviewer=Mallory")  # a URL parameter must not change who she is
    a.get_by_label("Session name").fill("Signed-in batch")
    a.get_by_role("button", name="Start session").click()
    a.get_by_text(re.compile(r"Alice Adams: 0 of 10 reviewed")).wait_for(timeout=180_000)
    _idle(a)
    a.get_by_role("button", name="Record verdict and go to the next case").click()
    a.get_by_text(re.compile(r"Alice Adams: 1 of 10 reviewed")).wait_for(timeout=60_000)
    b.goto(url + "/review")
    b.get_by_text(re.compile(r"Bob Brown: 0 of 10 reviewed")).wait_for(timeout=60_000)
    _idle(b)
    b.get_by_role("button", name="Record verdict and go to the next case").click()
    b.get_by_text(re.compile(r"Bob Brown: 1 of 10 reviewed")).wait_for(timeout=60_000)
    _no_exception(a)
    _no_exception(b)
    a.screenshot(path=str(ARTIFACTS / "21_signed_in_review.png"), full_page=True)

    st = ReviewStore(data_dir=data_dir)
    vs = st.verdicts()
    assert sorted((v["reviewer_id"], v["reviewer"], v["authenticated"]) for v in vs) == [
        ("alice-1234", "Alice Adams", 1), ("bob-5678", "Bob Brown", 1)]
    assert not [v for v in vs if "Mallory" in v["reviewer"]]
    assert all(r.get("authenticated") for r in st.audit_records() if r["event"] in ("verdict", "session_created"))
    assert st.verify_audit() > 0

    # a reviewer cannot promote: the page says which role it needs, and the library refuses on its own
    b.goto(url + "/finetune")
    b.get_by_text(re.compile(r"may not fine-tune a model: that needs the admin role")).wait_for(timeout=60_000)
    assert b.get_by_role("button", name=re.compile("Start fine-tuning")).is_disabled()
    bob = Identity("bob-5678", "Bob Brown", roles=frozenset({"reviewer"}), authenticated=True)
    from segcore.store import Workspace

    ws = Workspace(data_dir, default_model_dir=ROOT / "sample_data" / "models" / "default")
    with pytest.raises(PermissionDenied, match="needs the admin role"):
        ws.activate("v1", actor=bob)
    b.screenshot(path=str(ARTIFACTS / "22_reviewer_cannot_finetune.png"), full_page=True)

    # signing out ends the session (the provider may show its own end-session page first)
    b.get_by_role("button", name="Sign out").click()
    b.get_by_role("button", name="Sign in").or_(b.get_by_role("button", name="End session")).first.wait_for(
        timeout=60_000)
    if b.get_by_role("button", name="End session").count():
        b.get_by_role("button", name="End session").click()
        b.wait_for_load_state()
    b.goto(url + "/review")
    b.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
    assert b.get_by_text("Bob Brown").count() == 0

    # a tampered session cookie is refused
    cookies = ctx_a.cookies()
    user = [c for c in cookies if c["name"].startswith("_streamlit_user")]
    assert user, [c["name"] for c in cookies]
    forged = dict(user[0])
    value = forged["value"]
    forged["value"] = value[:-6] + ("AAAAAA" if not value.endswith("AAAAAA") else "BBBBBB")
    ctx_a.add_cookies([{k: forged[k] for k in ("name", "value", "domain", "path")}])
    a.goto(url)
    a.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
    assert a.get_by_text("Alice Adams").count() == 0
    ctx_a.close()
    ctx_b.close()


def test_admin_sees_users_and_roles_page(secure_app, browser):
    url, _ = secure_app
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    _sign_in(page, url, "carol-9999")
    page.get_by_role("link", name="Users & roles").click()
    page.get_by_role("heading", name="Users & roles").wait_for(timeout=60_000)
    page.get_by_label(re.compile("User \\(sign-in subject")).fill("bob-5678")
    page.get_by_role("button", name="Apply").click()
    page.get_by_text("Granted annotator for bob-5678").wait_for(timeout=60_000)
    _no_exception(page)
    page.screenshot(path=str(ARTIFACTS / "23_admin_roles.png"), full_page=True)
    ctx.close()
