"""The Airflow UI in a real browser (headless Chromium, Selenium) against the production-shaped
Airflow of ``make ui`` (``local_stack.airflow_services``: API server, scheduler, DAG processor,
triggerer, ``LocalExecutor``, PostgreSQL) with the real login of the simple auth manager.

A person logs in, finds the use case's DAGs, reads the training DAG's docs, triggers a training
run from the form with Params, reads the rendered SQL of its ``extract``, starts a backfill from
the backfill dialog, and answers the batch DAG's human-in-the-loop approval once with Approve and
once with Reject. Outcomes are checked through the REST API and the local SageMaker registry.
Screenshots go to ``docs/screenshots/`` (``docs/ui.md`` shows them). Tests share the module's
stack and browser and run in file order.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from e2e_support import ROOT, free_port, include_copy, reregister, rest, versions, wait_for
from selenium.webdriver.common.by import By
from ui_support import UI

from local_stack import browser
from local_stack.airflow_services import AirflowServices
from local_stack.stack import LocalStack

TRAIN = "mlops_tpch_orders_training"
BATCH = "mlops_tpch_orders_batch_inference"
ENDPOINT = "mlops_tpch_orders_endpoint"
TEARDOWN = "mlops_tpch_orders_endpoint_teardown"
OWNER = "data-engineering"
TAGS = {
    TRAIN: {"mlops", "tpch_orders", "training"},
    BATCH: {"mlops", "tpch_orders", "batch_inference"},
    ENDPOINT: {"mlops", "tpch_orders", "endpoint"},
    TEARDOWN: {"mlops", "tpch_orders", "endpoint"},
}
GROUP = "tpch-orders-late-delivery"
TRAIN_DS = "1996-02-29"
BACKFILL_DATES = ["1996-03-01", "1996-03-02"]
FAST = {"sagemaker_check_interval_seconds": 2}
SHOTS = ROOT / "docs" / "screenshots"
ASK = "approve.ask"


def _retry_sooner(query: str) -> tuple[str, str]:
    # Airflow 3.3.2's scheduler can fail a deferred task whose trigger fires before it drained
    # the executor's success event of the deferral (apache/airflow #67287, #72716; local jobs
    # end in seconds): a short retry delay keeps that retry from costing 5 minutes.
    tail = "    catchup: false\n    retries: 2\n    retry_delay_seconds: "
    return f"{tail}300\n  query: {query}", f"{tail}10\n  query: {query}"


@dataclass
class Airflow:
    """The module's running Airflow, its admin password and an API token of that admin."""

    stack: LocalStack
    services: AirflowServices
    password: str
    token: str
    # What the earlier tests made, for the later ones (run ids, the backfill's id).
    made: dict[str, str] = field(default_factory=dict)

    def get(self, path: str) -> dict:
        """``GET /api/v2/<path>`` as the admin (an unanswered request is tried again for up to
        a minute: on a loaded 2-core machine the API server can take longer than ``rest``'s
        10 s)."""
        url = f"{self.services.base_url}/api/v2/{path}"
        return wait_for(f"GET {path}", lambda: rest(url, token=self.token), 60)

    def post(self, path: str, body: dict) -> dict:
        """``POST /api/v2/<path>`` as the admin."""
        answer = rest(f"{self.services.base_url}/api/v2/{path}", "POST", body, self.token)
        assert answer is not None, f"POST {path} failed"
        return answer

    def task(self, dag_id: str, run_id: str, task_id: str) -> dict:
        """A task instance of a run."""
        return self.get(f"dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances/{task_id}")

    def finished_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict:
        """Wait until the run is ``success`` or ``failed``; the run."""
        path = f"dags/{dag_id}/dagRuns/{quote(run_id)}"
        return wait_for(
            f"{dag_id} run {run_id} to finish",
            lambda: (run := self.get(path))["state"] in ("success", "failed") and run,
            timeout,
        )

    def states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """``task_id -> state`` of a run."""
        listed = self.get(f"dags/{dag_id}/dagRuns/{quote(run_id)}/taskInstances")
        return {t["task_id"]: t["state"] for t in listed["task_instances"]}


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    """The local stack and Airflow with the batch DAG's approval asked in Airflow (HITL)."""
    home = Path(tmp_path_factory.mktemp("ui"))
    stack = LocalStack(presto_port=free_port(), aws_port=free_port(), home=home, clean=True)
    with contextlib.ExitStack() as running:
        running.enter_context(stack)
        env = include_copy(
            home,
            dict(
                [
                    _retry_sooner("training.sql"),
                    _retry_sooner("batch.sql"),
                    ("    poke_interval_seconds: 300\n", "    poke_interval_seconds: 5\n"),
                    (
                        "    mode: auto                  # none | auto | airflow | registry",
                        "    mode: airflow",
                    ),
                ]
            ),
        )
        extra = {
            **env,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
        pgdata = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="mlops-pg-")))
        services = running.enter_context(
            AirflowServices(stack, port=free_port(), extra_env=extra, pgdata=pgdata)
        )
        # The simple auth manager writes the generated admin password when the API server starts.
        passwords = stack.airflow_home / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())["admin"]
        token = rest(
            f"{services.base_url}/auth/token", "POST", {"username": "admin", "password": password}
        )["access_token"]
        for dag_id in TAGS:
            url = f"{services.base_url}/api/v2/dags/{dag_id}"
            wait_for(f"{dag_id} parsed", lambda u=url: rest(u, token=token), 240)
        yield Airflow(stack, services, password, token)


@pytest.fixture(scope="module")
def ui(airflow: Airflow) -> Iterator[UI]:
    """One headless Chromium for the module (not logged in yet)."""
    driver = browser.start()
    try:
        page = UI(driver, airflow.services.base_url, SHOTS)
        page.viewport(1440, 900)
        yield page
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def _page_on_failure(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """After a failed test, save what the browser showed (the path is printed)."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed and "ui" in request.fixturenames:
        page: UI = request.getfixturevalue("ui")
        folder = tmp_path_factory.mktemp("failed-page")
        page.driver.save_screenshot(str(folder / f"{request.node.name}.png"))
        (folder / f"{request.node.name}.html").write_text(page.driver.page_source)
        print(f"the page at the failure: {folder} ({page.driver.current_url})")


# --------------------------------------------------------------------------- the tests, in order


def test_the_login_form_refuses_a_wrong_password_and_signs_the_admin_in(
    airflow: Airflow, ui: UI
) -> None:
    ui.open("/")
    ui.wait().until(lambda d: "/auth/login" in d.current_url, "no redirect to the login form")
    ui.visible("input[name=username]").send_keys("admin")
    ui.visible("input[name=password]").send_keys(airflow.password + "-wrong")
    ui.click("button[type=submit]")
    ui.text_appears("Invalid credentials")
    assert "/auth/login" in ui.driver.current_url
    ui.screenshot("login")
    ui.retype(ui.visible("input[name=password]"), airflow.password)
    ui.click("button[type=submit]")
    ui.wait().until(lambda d: "/auth/login" not in d.current_url, "still on the login form")
    ui.visible("[data-testid=nav-dags-link]")
    assert ui.driver.get_cookie("_token"), "the UI keeps its session token in a cookie"


def test_the_dag_list_shows_each_use_case_dag_with_its_tags_and_owner(ui: UI) -> None:
    ui.open(f"/dags?owners={OWNER}")
    ui.wait().until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-testid=dag-card]")) == len(TAGS),
        f"the owner filter {OWNER} does not list {len(TAGS)} DAGs",
    )
    shown = {}
    for card in ui.driver.find_elements(By.CSS_SELECTOR, "[data-testid=dag-card]"):
        dag_id = card.find_element(By.CSS_SELECTOR, "[data-testid=dag-id]").text
        tags = card.find_elements(By.CSS_SELECTOR, "[data-testid=dag-tag] a, a[href*='tags=']")
        shown[dag_id] = {t.text for t in tags}
    assert shown == TAGS
    ui.screenshot("dag-list")
    ui.open("/dags?owners=someone-else")
    ui.text_appears("0 Dags")
    for dag_id in TAGS:
        ui.open(f"/dags/{dag_id}")
        owner = ui.visible(f"a[href='/dags?owners={OWNER}']")
        assert owner.text == OWNER, f"{dag_id}'s header names {owner.text!r}"


def test_the_training_dags_docs_render_as_markdown(ui: UI) -> None:
    ui.open(f"/dags/{TRAIN}")
    ui.click("button[aria-label='Dag Docs']")
    docs = ui.dialog()
    ui.text_appears("Dag Documentation")
    assert docs.find_element(By.TAG_NAME, "h3").text == "Training: tpch_orders"
    headers = [th.text for th in docs.find_elements(By.CSS_SELECTOR, "table th")]
    assert headers == ["step", "what happens"]
    steps = {c.text for c in docs.find_elements(By.CSS_SELECTOR, "table td code")}
    assert {"wait_for_data", "extract", "quality_gate"} <= steps
    assert "###" not in docs.text and "|---|" not in docs.text, "markdown left unrendered"
    ui.screenshot("dag-docs")
    ui.click("button[aria-label=Close]", docs)
    ui.dialog_closed()


def test_the_trigger_form_starts_a_training_run_with_params(airflow: Airflow, ui: UI) -> None:
    ui.viewport(1440, 1100)  # the whole form in the screenshot
    ui.open(f"/dags/{TRAIN}")
    ui.click("[data-testid=trigger-dag-button]")
    form = ui.dialog()
    ui.set_datetime(ui.visible("[data-testid=datetime-input]", form), TRAIN_DS.replace("-", "/"))
    assert ui.visible("[data-testid=datetime-input]", form).text == "Feb 29, 1996 00:00"
    ui.retype(ui.visible("input[name=element_evaluation_threshold]", form), "0.6")
    interval = ui.visible("input[name=element_sagemaker_check_interval_seconds]", form)
    ui.retype(interval, "2")
    ui.visible("h2", form).click()  # leaves the field: the form takes the typed number
    ui.screenshot("trigger-form")
    ui.click("button[id$='trigger:advancedOptions']", form)
    ui.wait().until(
        lambda _: (
            '"evaluation_threshold": 0.6' in form.text
            and '"sagemaker_check_interval_seconds": 2' in form.text
        ),
        "the configuration JSON does not hold the typed Params",
    )
    ui.click("[data-testid=trigger-dag-submit]", form)
    ui.dialog_closed()
    # The UI opens the new run's page.
    ui.wait().until(lambda d: f"/dags/{TRAIN}/runs/" in d.current_url, "no run page")
    run_id = unquote(ui.driver.current_url.rsplit("/runs/", 1)[1])
    run = airflow.get(f"dags/{TRAIN}/dagRuns/{quote(run_id)}")
    airflow.made["training"] = run["dag_run_id"]
    assert run["logical_date"] == f"{TRAIN_DS}T00:00:00Z"
    assert run["conf"] == {"evaluation_threshold": 0.6, **FAST}
    assert (run["run_type"], run["triggering_user_name"]) == ("manual", "admin")
    assert airflow.get(f"dags/{TRAIN}")["is_paused"] is False, "unpaused on trigger"
    ui.viewport(1440, 900)


def test_the_backfill_dialog_starts_a_two_date_training_backfill(airflow: Airflow, ui: UI) -> None:
    ui.open(f"/dags/{TRAIN}")
    ui.click("[data-testid=trigger-dag-button]")
    form = ui.dialog()
    ui.viewport(1440, 1100)  # the whole form in the screenshot
    ui.click("label[for$='radio:input:backfill']", form)
    ui.text_appears("Run this Dag for a range of dates")
    start, end = form.find_elements(By.CSS_SELECTOR, "[data-testid=datetime-input]")
    ui.set_datetime(start, BACKFILL_DATES[0].replace("-", "/"))
    ui.set_datetime(end, BACKFILL_DATES[-1].replace("-", "/"))
    ui.text_appears(f"{len(BACKFILL_DATES)} runs will be triggered.")
    ui.retype(ui.visible("input[name=element_sagemaker_check_interval_seconds]", form), "2")
    ui.visible("h2", form).click()
    # Airflow 3.3.2's dialog sends the Run Parameters (as the backfill's dag_run_conf) only
    # with this box ticked; unticked, the runs get the DAG's defaults (a 30 s poll interval).
    form.find_element(
        By.XPATH, ".//label[contains(., 'Override parameters on existing runs')]"
    ).click()
    ui.screenshot("backfill-form")
    run_backfill = form.find_element(By.XPATH, ".//button[.='Run Backfill']")
    ui.wait().until(lambda _: run_backfill.is_enabled(), "Run Backfill stays disabled")
    run_backfill.click()
    ui.dialog_closed()
    ui.viewport(1440, 900)
    (backfill,) = airflow.get(f"backfills?dag_id={TRAIN}")["backfills"]
    airflow.made["backfill"] = str(backfill["id"])
    assert backfill["from_date"][:10] == BACKFILL_DATES[0]
    assert backfill["to_date"][:10] == BACKFILL_DATES[-1]
    assert backfill["dag_run_conf"] == {"evaluation_threshold": 0.7, **FAST}


def test_the_triggered_run_succeeds_in_the_grid_with_the_forms_params(
    airflow: Airflow, ui: UI
) -> None:
    run_id = airflow.made["training"]
    run = airflow.finished_run(TRAIN, run_id)
    assert run["state"] == "success", airflow.states(TRAIN, run_id)
    gate = airflow.get(
        f"dags/{TRAIN}/dagRuns/{quote(run_id)}/taskInstances/quality_gate/xcomEntries/"
        "return_value?deserialize=true&stringify=false"
    )["value"]
    assert gate["threshold"] == 0.6, "the form's evaluation_threshold reached the gate"
    ui.open(f"/dags/{TRAIN}/runs/{quote(run_id)}")
    ui.click("button[aria-label='Show Grid (Press g)']")
    header = ui.visible("[data-testid=header-card]")
    ui.wait(60).until(lambda _: "Success" in header.text, "the run header does not say Success")
    for task in ("check_run_date", "extract", "tune", "quality_gate", "register"):
        ui.visible(f"[data-testid='grid-{run_id}-{task}']")
    ui.screenshot("grid")
    # The graph of the same run, every group expanded, the details panel out of the way.
    ui.viewport(1900, 700)
    ui.click("button[aria-label='Show Graph (Press g)']")
    ui.click("button[aria-label='Expand all task groups']")
    ui.visible(".react-flow__node[data-id='register.version']")
    ui.click("button[aria-label='Collapse Details Panel']")
    ui.click("button[aria-label='Fit View']")
    nodes = {
        n.get_attribute("data-id")
        for n in ui.driver.find_elements(By.CSS_SELECTOR, ".react-flow__node")
    }
    assert {"check_run_date", "wait_for_data", "extract", "split.job", "tune.job",
            "evaluate.job", "quality_gate", "register.version"} <= nodes  # fmt: skip
    ui.screenshot("graph")
    # The UI keeps the chosen view for the next pages: back to the grid and its details.
    ui.click("button[aria-label='Show Grid (Press g)']")
    ui.viewport(1440, 900)


def test_extracts_rendered_sql_holds_the_runs_date_window(airflow: Airflow, ui: UI) -> None:
    run_id = airflow.made["training"]
    run = airflow.get(f"dags/{TRAIN}/dagRuns/{quote(run_id)}")
    end = datetime.fromisoformat(run["data_interval_end"]).date()
    start = end - timedelta(days=365)  # training.lookback_days
    ui.open(f"/dags/{TRAIN}/runs/{quote(run_id)}/tasks/extract/rendered_templates")
    cell = ui.visible("table")
    row = cell.find_element(By.XPATH, ".//tr[td[1][normalize-space()='sql']]")
    sql = ui.code_text(row.find_element(By.TAG_NAME, "code"))
    assert f"WHERE o.orderdate >= DATE '{start}'" in sql
    assert f"AND o.orderdate < DATE '{end}'" in sql
    assert "FROM tpch.tiny.orders AS o" in sql
    assert "{{" not in sql, "every template expression rendered"
    assert end == date.fromisoformat(TRAIN_DS), "a manual run's interval ends at its logical date"
    ui.screenshot("rendered-sql")


def test_the_backfill_completes_with_a_successful_run_per_date(airflow: Airflow, ui: UI) -> None:
    backfill_id = airflow.made["backfill"]
    done = wait_for(
        "the backfill to complete",
        lambda: (b := airflow.get(f"backfills/{backfill_id}"))["completed_at"] and b,
        900,
    )
    runs = [
        r for r in airflow.get(f"dags/{TRAIN}/dagRuns?limit=100")["dag_runs"]
        if r["run_type"] == "backfill"
    ]  # fmt: skip
    assert sorted(r["logical_date"][:10] for r in runs) == BACKFILL_DATES
    failed = {r["dag_run_id"]: airflow.states(TRAIN, r["dag_run_id"]) for r in runs}
    assert all(r["state"] == "success" for r in runs), failed
    ui.open(f"/dags/{TRAIN}/backfills")
    ui.text_appears(BACKFILL_DATES[0])
    for run in runs:
        ui.visible(f"[data-testid='grid-{run['dag_run_id']}-register']")
    ui.screenshot("backfill")
    assert done["id"] == int(backfill_id)


def _ask(airflow: Airflow, ds: str) -> str:
    """Start a batch run for ``ds`` (REST, for an exact logical date) and wait until it asks."""
    run_id = airflow.post(
        f"dags/{BATCH}/dagRuns", {"logical_date": f"{ds}T00:00:00Z", "conf": FAST}
    )["dag_run_id"]
    _asking(airflow, run_id)
    return run_id


def _asking(airflow: Airflow, run_id: str, settle: float = 20) -> int:
    """Wait until the approval task has awaited input for ``settle`` seconds in the same try;
    that try's number. Airflow 3.3.2's requeue race (README: "A known Airflow 3.3.2 race") can
    put a just-deferred HITL task up for retry, and the retry asks again: an answer to the
    first try would be lost."""
    held: dict[str, float] = {}

    def settled() -> int | None:
        ti = airflow.task(BATCH, run_id, ASK)
        key = f"{ti['state']}/{ti['try_number']}"
        held.setdefault(key, time.monotonic())
        waited = time.monotonic() - held[key]
        return ti["try_number"] if ti["state"] == "awaiting_input" and waited >= settle else None

    return wait_for(f"the approval of {run_id}", settled, 300)


def _answer(airflow: Airflow, ui: UI, run_id: str, option: str) -> None:
    """Click ``option`` on the approval form of the run's asking try and wait for the task to
    end; when the requeue race (see ``_asking``) made a new try ask again, answer that one."""
    for _ in range(3):
        tried = _asking(airflow, run_id, settle=0)
        ui.open(f"/dags/{BATCH}/runs/{quote(run_id)}/tasks/{ASK}/required_actions")
        ui.click(f"[data-testid=hitl-option-{option}]")
        ui.text_appears("from admin")

        def outcome(tried: int = tried) -> dict | None:
            ti = airflow.task(BATCH, run_id, ASK)
            done = ti["state"] in ("success", "skipped", "failed")
            asked_again = ti["try_number"] > tried or ti["state"] == "up_for_retry"
            return ti if done or asked_again else None

        ti = wait_for("the answer to reach the task", outcome, 180)
        assert ti["state"] != "failed", f"the approval task failed after {option}"
        if ti["state"] in ("success", "skipped"):
            return
    raise AssertionError(f"the approval of {run_id} was asked again after each answer")


def test_the_batch_trigger_form_accepts_its_default_params(ui: UI) -> None:
    # The optional version Param is nullable: a plain string Param is required in this form,
    # and Trigger would stay disabled until a version is typed.
    ui.open(f"/dags/{BATCH}")
    ui.click("[data-testid=trigger-dag-button]")
    form = ui.dialog()
    ui.text_appears("Pinned version")
    assert ui.visible("input[name=element_pinned_version]", form).get_attribute("value") == ""
    submit = ui.visible("[data-testid=trigger-dag-submit]", form)
    ui.wait(10).until(lambda _: submit.is_enabled(), "Trigger stays disabled")
    ui.click("button[aria-label=Close]", form)
    ui.dialog_closed()


def test_approve_in_the_ui_approves_the_version_and_the_run_scores(
    airflow: Airflow, ui: UI
) -> None:
    pending = [
        v
        for v in versions(airflow.stack, GROUP)
        if v["ModelApprovalStatus"] == "PendingManualApproval"
    ]
    asked = max(pending, key=lambda v: v["ModelPackageVersion"])
    rest(
        f"{airflow.services.base_url}/api/v2/dags/{BATCH}",
        "PATCH",
        {"is_paused": False},
        airflow.token,
    )
    run_id = _ask(airflow, "1996-03-03")
    ui.viewport(1440, 1100)
    ui.open("/required_actions")
    link = ui.visible(f"a[href$='/runs/{run_id}/tasks/{ASK}/required_actions']")
    assert link.text.startswith(f"Approve model version {asked['ModelPackageVersion']} ")
    link.click()
    ui.text_appears(asked["ModelPackageArn"])
    ui.screenshot("approval-form")
    _answer(airflow, ui, run_id, "Approve")
    run = airflow.finished_run(BATCH, run_id)
    states = airflow.states(BATCH, run_id)
    assert run["state"] == "success", states
    assert states["transform.job"] == "success", "the approved version scored the run"
    detail = airflow.get(f"dags/{BATCH}/dagRuns/{quote(run_id)}/taskInstances/{ASK}/-1/hitlDetails")
    assert detail["chosen_options"] == ["Approve"]
    assert detail["responded_by_user"]["name"] == "admin"
    described = airflow.stack.client("sagemaker").describe_model_package(
        ModelPackageName=asked["ModelPackageArn"]
    )
    assert described["ModelApprovalStatus"] == "Approved"
    assert "Approved in Airflow by admin" in described["ApprovalDescription"]
    airflow.made["approved"] = asked["ModelPackageArn"]
    ui.screenshot("approval-answered")
    ui.viewport(1440, 900)


def test_reject_in_the_ui_rejects_the_version_and_skips_the_scoring(
    airflow: Airflow, ui: UI
) -> None:
    ds = "1996-03-04"
    candidate = reregister(airflow.stack, airflow.made["approved"], ds, "PendingManualApproval")
    run_id = _ask(airflow, ds)
    ui.open(f"/dags/{BATCH}/runs/{quote(run_id)}/tasks/{ASK}")
    ui.click(f"a[href$='/tasks/{ASK}/required_actions']")
    ui.text_appears(candidate)
    _answer(airflow, ui, run_id, "Reject")
    run = airflow.finished_run(BATCH, run_id)
    states = airflow.states(BATCH, run_id)
    assert states[ASK] == "success", states
    assert states["transform.job"] == "skipped", "a rejected version scores nothing"
    assert run["state"] == "success", states
    described = airflow.stack.client("sagemaker").describe_model_package(ModelPackageName=candidate)
    assert described["ModelApprovalStatus"] == "Rejected"
    assert "Rejected in Airflow by admin" in described["ApprovalDescription"]
