"""Identity and roles: the acting functions check the actor, the users file holds salted
scrypt hashes, OIDC identities map to roles, and the app signs people in.

Every check is made where the action happens (tests call the functions directly), and
the app's Review page is driven with AppTest as a visitor, a viewer and an annotator.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db import Store
from engine.types import Box, Detection
from hitl.cli import main
from hitl.jobs import lock_path, start_training, stop_training
from hitl.project import ProjectPaths, make_active
from hitl.roles import ROLES, Forbidden, User, acting_name, require
from hitl.users import (
    ScryptParams,
    add_user,
    authenticate,
    list_users,
    load_users,
    oidc_user,
    remove_user,
    set_auth_mode,
    users_file,
)
from hitl.verdicts import record_verdict, undo_last_verdict
from hitl.views.cluster_edits import current_clusters, judge_cluster, split_cluster
from hitl.views.query_links import confirm_hit, start_query_run
from tests.app.project_fixture import MODEL, build_app_project

FAST = ScryptParams(n=2 ** 10)  # the real cost (2^17) is for passwords, not for tests
APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
VIEWER, ANNOTATOR = User("vera", "viewer"), User("ann", "annotator")
ADJUDICATOR, ADMIN = User("adam", "adjudicator"), User("root", "admin")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return build_app_project(tmp_path_factory.mktemp("roles"))


@pytest.fixture
def project(template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artminer.duckdb"
    copy.write_bytes(template.read_bytes())
    return copy


# ---------------------------------------------------------------------- roles


def test_role_ladder_known_answers() -> None:
    table = {u.role: [a for a in ("view", "verdict", "split_cluster", "train") if u.can(a)]
             for u in (VIEWER, ANNOTATOR, ADJUDICATOR, ADMIN)}
    assert table == {"viewer": ["view"], "annotator": ["view", "verdict"],
                     "adjudicator": ["view", "verdict", "split_cluster"],
                     "admin": ["view", "verdict", "split_cluster", "train"]}
    assert ROLES == ("viewer", "annotator", "adjudicator", "admin")
    with pytest.raises(ValueError, match="unknown role"):
        User("x", "superuser")
    with pytest.raises(ValueError, match="unknown action"):
        require(ADMIN, "launch_missiles")
    require(None, "train")  # the trusted local caller (command line)


def test_an_actor_records_verdicts_only_as_themself() -> None:
    assert acting_name(ANNOTATOR, None) == "ann" and acting_name(ANNOTATOR, "ann") == "ann"
    with pytest.raises(Forbidden, match="may not record verdicts as 'mallory'"):
        acting_name(ANNOTATOR, "mallory")
    with pytest.raises(Forbidden, match="needs the annotator role"):
        acting_name(VIEWER, "vera")
    assert acting_name(None, "typed name") == "typed name"


def test_verdict_functions_enforce_roles(project: Path) -> None:
    with Store(project) as store:
        link = store.list_links(order="link_id")[0]
        with pytest.raises(Forbidden):
            record_verdict(store, link.link_id, "confirm", actor=VIEWER)
        with pytest.raises(Forbidden):
            record_verdict(store, link.link_id, "confirm", "mallory", actor=ANNOTATOR)
        assert store.link_history(link.link_id) == []
        record_verdict(store, link.link_id, "confirm", actor=ANNOTATOR, note="same dog")
        (verdict,) = store.link_history(link.link_id)
        assert (verdict.annotator, verdict.verdict) == ("ann", "confirm")
        with pytest.raises(Forbidden):
            undo_last_verdict(store, actor=VIEWER)
        assert undo_last_verdict(store, actor=ADJUDICATOR) is None  # nothing of adam's
        assert undo_last_verdict(store, actor=ANNOTATOR).verdict_id == verdict.verdict_id
        assert store.link_status(link.link_id) == "unreviewed"


def test_cluster_and_query_functions_enforce_roles(project: Path) -> None:
    with Store(project) as store:
        cluster = current_clusters(store, MODEL)[0]
        with pytest.raises(Forbidden):
            judge_cluster(store, cluster.cluster_id, "confirm", None, actor=VIEWER)
        judge_cluster(store, cluster.cluster_id, "confirm", None, actor=ANNOTATOR)
        assert store.history("cluster", cluster.cluster_id)[-1].annotator == "ann"
        half = [r.region_id for r in cluster.regions[: len(cluster.regions) // 2]]
        with pytest.raises(Forbidden, match="needs the adjudicator role"):
            split_cluster(store, cluster, [half], None, actor=ANNOTATOR)
        assert len(split_cluster(store, cluster, [half], None, actor=ADJUDICATOR)) == 2
        image = store.list_images()[0]
        run = start_query_run(store, MODEL, image.image_id, Box(0, 0, 10, 10))
        hit = Detection(store.list_images()[1].image_id, Box(5, 5, 15, 15), 0.9)
        n_links = store.count_links()
        with pytest.raises(Forbidden):
            confirm_hit(store, run, image.image_id, Box(0, 0, 10, 10), hit, None, actor=VIEWER)
        assert store.count_links() == n_links  # refused before anything was written


def test_training_and_model_functions_need_admin(project: Path) -> None:
    paths = ProjectPaths(project.resolve())
    with pytest.raises(Forbidden, match="needs the admin role"):
        start_training(project, command=[sys.executable, "-c", "pass"], actor=ADJUDICATOR)
    assert not lock_path(paths).exists()  # refused before the lock or a process
    with pytest.raises(Forbidden):
        stop_training(object(), actor=ANNOTATOR)  # refused before the job is even looked at
    with Store(project) as store:
        with pytest.raises(Forbidden):
            make_active(store, MODEL, actor=ANNOTATOR)
        make_active(store, MODEL, actor=ADMIN)


# ---------------------------------------------------------------------- users file


def test_users_file_holds_salted_scrypt_hashes(tmp_path: Path) -> None:
    path = users_file(tmp_path / "p.duckdb")
    add_user(path, "ann", "annotator", "correct horse", params=FAST)
    add_user(path, "ben", "viewer", "correct horse", params=FAST)
    add_user(path, "ola@uni.ch", "adjudicator")  # an OIDC identity: no password
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    users = load_users(path)
    assert users["ann"]["salt"] != users["ben"]["salt"]
    assert users["ann"]["hash"] != users["ben"]["hash"]  # same password, different salt
    assert "correct horse" not in path.read_text()
    assert users["ann"]["scrypt"] == {"n": 1024, "r": 8, "p": 1, "dklen": 32}
    assert authenticate(path, "ann", "correct horse") == User("ann", "annotator")
    assert authenticate(path, "ann", "wrong horse") is None
    assert authenticate(path, "ola@uni.ch", "") is None  # no password: no local sign-in
    assert authenticate(path, "nobody", "correct horse") is None
    with pytest.raises(ValueError, match="at least 8"):
        add_user(path, "cy", "viewer", "short", params=FAST)
    with pytest.raises(Forbidden):
        add_user(path, "eve", "admin", "long enough", params=FAST, actor=ANNOTATOR)
    assert remove_user(path, "ben") and [u.name for u in list_users(path)] == ["ann", "ola@uni.ch"]


def test_oidc_identities_map_to_roles(tmp_path: Path) -> None:
    """A stubbed identity (what ``st.user`` holds after ``st.login``)."""
    path = users_file(tmp_path / "p.duckdb")
    add_user(path, "Ola@Uni.ch", "adjudicator")
    add_user(path, "@museum.org", "annotator")  # everyone at the museum
    assert oidc_user({"email": "ola@uni.ch", "email_verified": True}, path) == User(
        "ola@uni.ch", "adjudicator")
    assert oidc_user({"email": "kim@museum.org"}, path).role == "annotator"
    assert oidc_user({"email": "x@elsewhere.net"}, path) == User("x@elsewhere.net", "viewer")
    assert oidc_user({"email": "x@elsewhere.net"}, path, default_role="annotator").role == "annotator"
    assert oidc_user({"email": "ola@uni.ch", "email_verified": False}, path).role == "viewer"
    assert oidc_user({"sub": "1234"}, path) == User("1234", "viewer")
    with pytest.raises(ValueError, match="neither an e-mail nor a subject"):
        oidc_user({"name": "no id"}, path)


def test_cli_users_add_list_and_auth(project: Path, monkeypatch, capsys) -> None:
    def cli(*args: str, stdin: str = "") -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return main(["users", *args, "--project", str(project)])

    assert cli("add", "ann", "--role", "annotator", "--password-stdin", stdin="long password\n") == 0
    assert cli("auth", "local") == 0
    capsys.readouterr()
    assert cli("list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "auth": "local", "users": [{"name": "ann", "role": "annotator"}]}
    with pytest.raises(SystemExit) as bad_role:
        cli("add", "bob", "--role", "pope", "--password-stdin", stdin="long password\n")
    assert bad_role.value.code == 2
    assert cli("add", "bob", "--role", "viewer", "--password-stdin", stdin="short\n") == 2
    assert authenticate(users_file(project), "ann", "long password") == User("ann", "annotator")


# ---------------------------------------------------------------------- the app


def _app(project: Path, monkeypatch, **params: str) -> AppTest:
    monkeypatch.setenv("ARTMINER_PROJECT", str(project))
    monkeypatch.delenv("ARTMINER_AUTH", raising=False)
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in params.items():
        at.query_params[key] = value
    return at


def _sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="login_name").input(name)
    at.text_input(key="login_password").input(password)
    return next(b for b in at.button if b.label == "Sign in").click().run()


def test_app_with_local_auth_signs_in_and_ignores_the_url_annotator(project: Path,
                                                                     monkeypatch) -> None:
    path = users_file(project)
    add_user(path, "ann", "annotator", "long password", params=FAST)
    add_user(path, "vera", "viewer", "long password", params=FAST)
    with Store(project) as store:
        set_auth_mode(store, "local")
    at = _app(project, monkeypatch, annotator="mallory").run()
    assert not at.exception
    assert [s.value for s in at.subheader] == ["Sign in"]  # nothing of the project shown
    assert not at.get("image")
    at = _sign_in(at, "ann", "wrong password!")
    assert "wrong password" in " ".join(e.value for e in at.error)
    at = _sign_in(at, "ann", "long password")
    assert not at.exception
    texts = "\n".join(t.value for t in at.text)
    assert "Signed in: ann (annotator)" in texts and "mallory" not in texts
    at.button(key="confirm").click().run()
    assert not at.exception
    with Store(project) as store:
        annotators = {v.annotator for lk in store.list_links() for v in store.link_history(lk.link_id)}
    assert annotators == {"ann"}


def test_app_viewer_cannot_review(project: Path, monkeypatch) -> None:
    add_user(users_file(project), "vera", "viewer", "long password", params=FAST)
    monkeypatch.setenv("ARTMINER_AUTH", "local")  # `artminer app --auth local`
    monkeypatch.setenv("ARTMINER_PROJECT", str(project))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at = _sign_in(at, "vera", "long password")
    assert not at.exception
    assert any("needs the annotator role" in i.value for i in at.info)
