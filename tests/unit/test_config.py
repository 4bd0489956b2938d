from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from flowflexd.config.model import default_state_dir, load
from flowflexd.errors import ConfigError
from flowflexd.inbox import layout
from flowflexd.rules.matching import match, payload
from flowflexd.rules.templates import MISSING

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    "FLOWFLEX_API_KEY": "cik_test",
    "FLOWFLEX_API_SECRET": "secret-from-env",
    "HOME": "/nonexistent-home",
}

ISSUE_EXAMPLE = r"""
flowflex:
  base_url: https://api.flowflex.ai
  api_key: ${FLOWFLEX_API_KEY}          # ${VAR} reads the environment
  api_secret: ${FLOWFLEX_API_SECRET}    # or api_secret_file: /path (one line)
  integration_code: ic_abc123
  timeout_seconds: 30
workers: 4              # files in flight at once, over all folders
settle_seconds: 2       # complete once size and mtime hold still this long
folders:
  - path: /srv/drop/invoices            # the inbox
    done: /srv/drop/invoices-done       # default: <path>/done
    failed: /srv/drop/invoices-failed   # default: <path>/failed
    poll: false                         # true: poll (network mounts)
    unmatched: ignore                   # ignore | fail
    rules:                              # first match wins
      - name: invoice
        pattern: "INV-*.pdf"            # glob on the file name, or
        # regex: '^INV-(?P<number>\d+)\.pdf$'  (named groups)
        event: invoice.created
        sidecar: "{stem}.json"          # optional metadata file beside it
        sidecar_required: true          # default true when sidecar is set
        sidecar_timeout: 60             # seconds to wait for it
        attach:                         # optional further files, same stem
          label: "{stem}.png"
        payload:                        # optional
          assetId: "{file}"
          label: "{attach.label}"
          customer_id: "{sidecar.customer.id}"
          source: scanner-3
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    path.chmod(0o600)
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), environ=ENV if env is None else env)
    assert caught.value.exit_code == 2
    return caught.value.problems


MINIMAL = """
flowflex:
  base_url: https://api.flowflex.ai
  api_key: k
  api_secret: ${FLOWFLEX_API_SECRET}
  integration_code: ic
folders:
  - path: inbox
    rules:
      - pattern: "*.pdf"
        event: doc
"""


def test_the_issue_example_loads_as_written(tmp_path: Path) -> None:
    config = load(write(tmp_path, ISSUE_EXAMPLE), environ=ENV)

    assert config.api.api_key == "cik_test"
    assert config.api.api_secret == "secret-from-env"
    assert config.api.integration_code == "ic_abc123"
    assert config.workers == 4
    assert config.settle_seconds == 2
    [folder] = config.folders
    assert folder.path == Path("/srv/drop/invoices")
    assert folder.done == Path("/srv/drop/invoices-done")
    assert folder.failed == Path("/srv/drop/invoices-failed")
    assert folder.unmatched == "ignore"
    [rule] = folder.rules
    assert rule.name == "invoice"
    assert rule.sidecar_required is True
    assert rule.sidecar_timeout == 60
    assert set(rule.attach) == {"label"}


def test_the_shipped_example_loads(tmp_path: Path) -> None:
    config = load(ROOT / "config.example.yaml", environ={**ENV, "FLOWFLEX_INTEGRATION_CODE": "ic"})

    assert config.folders[0].path == ROOT / "demo" / "inbox"
    assert config.state_dir == ROOT / "demo" / "state"
    assert [rule.name for rule in config.folders[0].rules] == ["invoice", "document"]


def test_the_shipped_example_loads_for_the_emulator_without_credentials() -> None:
    config = load(ROOT / "config.example.yaml", environ={"HOME": "/x"}, emulator=True)

    assert config.api.timeout_seconds == 30


def test_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL), environ=ENV)

    [folder] = config.folders
    assert folder.path == tmp_path / "inbox"  # relative to the config file
    assert folder.done == tmp_path / "inbox" / "done"
    assert folder.failed == tmp_path / "inbox" / "failed"
    assert layout.home(folder.path) == tmp_path / "inbox" / ".flowflexd"
    assert folder.poll is False
    assert folder.unmatched == "ignore"
    assert config.workers == 4
    assert config.settle_seconds == 2
    assert config.rescan_seconds == 60
    assert config.shutdown_grace_seconds == 20
    assert config.api.timeout_seconds == 30
    assert config.state_dir == default_state_dir(ENV)


def test_state_dir_comes_from_systemd_when_set(tmp_path: Path) -> None:
    config = load(
        write(tmp_path, MINIMAL), environ={**ENV, "STATE_DIRECTORY": "/var/lib/flowflexd"}
    )

    assert config.state_dir == Path("/var/lib/flowflexd")


def test_env_defaults_and_escapes(tmp_path: Path) -> None:
    text = MINIMAL.replace("event: doc", 'event: "${EVENT_NAME:-doc.default}"').replace(
        "api_key: k", "api_key: $${literal}"
    )

    config = load(write(tmp_path, text), environ=ENV)

    assert config.folders[0].rules[0].event.source == "doc.default"
    assert config.api.api_key == "${literal}"


def test_every_problem_is_reported_at_once_with_file_line_and_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        flowflex:
          base_url: https://api.flowflex.ai
          api_key: k
          api_secret: s
          integration_code: ic
        workers: four
        folders:
          - path: inbox
            unmatched: drop
            rules:
              - pattern: "*.pdf"
                patern: "*.PDF"
              - regex: "INV-(?P<n>\\\\d+"
                event: x
        """,
    )

    config = str(tmp_path / "config.yaml")
    assert found == [
        f"{config}:7: workers: expected a whole number 1 or more, got text 'four'",
        f"{config}:10: folders[0].unmatched: expected one of ignore | fail, got 'drop'",
        f"{config}:13: folders[0].rules[0].patern: unknown key; did you mean 'pattern'?",
        f"{config}:12: folders[0].rules[0].event: required: the event name to fire, "
        "e.g. invoice.created",
        f"{config}:14: folders[0].rules[1].regex: not a valid regular expression: "
        "missing ), unterminated subpattern at position 4",
    ]


def test_the_whole_message_names_the_count_and_each_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, "workers: 0\n"), environ=ENV)

    config = tmp_path / "config.yaml"
    assert str(caught.value).splitlines() == [
        "3 configuration problems",
        f"  - {config}:1: flowflex: required: the FlowFlex base_url, api_key, api_secret and "
        "integration_code",
        f"  - {config}:1: workers: expected a whole number 1 or more, got 0",
        f"  - {config}:1: folders: required: a list of inbox folders, each with path and rules",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("flowflex: [1\n", ":1:"),
        ("a: b\n  c: d\n", ":2:"),
    ],
)
def test_bad_yaml_names_the_line(tmp_path: Path, text: str, expected: str) -> None:
    [message] = problems(tmp_path, text)

    assert expected in message
    assert "not valid YAML" in message


def test_an_empty_file_points_at_the_example(tmp_path: Path) -> None:
    [message] = problems(tmp_path, "# nothing\n")

    assert "config.example.yaml" in message


def test_a_key_given_twice_is_a_problem(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + "workers: 2\nworkers: 3\n")

    assert any("workers: given twice" in p for p in found)


def test_a_missing_environment_variable_is_named(tmp_path: Path) -> None:
    [message] = problems(tmp_path, MINIMAL, env={"HOME": "/x"})

    assert ":5: flowflex.api_secret: environment variable FLOWFLEX_API_SECRET is not set" in message


def test_missing_folders_and_flowflex(tmp_path: Path) -> None:
    found = problems(tmp_path, "workers: 2\n")

    assert any("flowflex: required" in p for p in found)
    assert any("folders: required" in p for p in found)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('{pattern: "*.pdf", event: "{match.n}"}', "needs a regex rule with named groups"),
        ('{regex: "(?P<a>x)", event: "{match.b}"}', "no group named 'b' (groups: a)"),
        ('{pattern: "*.pdf", event: e, payload: {x: "{sidecar.a}"}}', "needs a sidecar"),
        (
            '{pattern: "*.pdf", event: e, payload: {x: "{attach.label}"}}',
            "no attachment named 'label'",
        ),
        ('{pattern: "*.pdf", event: "{file}"}', "{file} cannot be used here"),
        ('{pattern: "*.pdf", event: e, sidecar: "{sidecar.x}.json"}', "cannot be used here"),
        ('{pattern: "*.pdf", event: e, payload: {x: "{what}"}}', "unknown placeholder {what}"),
        ('{pattern: "*.pdf", event: e, payload: [1]}', "expected a mapping"),
        ('{pattern: "*.pdf", regex: "x", event: e}', "give pattern or regex, not both"),
        ("{event: e}", "needs pattern"),
        (
            '{pattern: "*.pdf", event: e, sidecar_timeout: -1}',
            "sidecar_timeout: expected a number 0 or more",
        ),
        ('{manifest: "*.csv", event: e}', "file_column: required with manifest"),
        ('{manifest: "*.csv", pattern: "*.pdf", event: e, file_column: "{row.F}"}', "one of them"),
        (
            '{manifest: "*.csv", event: e, file_column: "{row.F}", sidecar: "{stem}.json"}',
            "a manifest rule takes its metadata from the manifest's rows",
        ),
        ('{manifest: "*.csv", event: e, file_column: "{name}"}', "use {row.COLUMN}"),
        ('{pattern: "*.pdf", event: "{row.x}"}', "{row.x} cannot be used here"),
        ('{pattern: "*.pdf", event: e, file_column: "{row.F}"}', "only a manifest rule has it"),
        ('{manifest: "*.csv", event: "{manifest.size}", file_column: "{row.F}"}', "known are"),
        ('{pattern: "*.pdf", event: e, marker: x, folder_marker: READY}', "not both"),
        ('{pattern: "*.pdf", event: e, folder_marker: "a/READY"}', "a plain file name"),
        ('{pattern: "*.pdf", event: e, sidecar: x, sidecar_encoding: klingon}', "unknown encoding"),
        ('{pattern: "*.pdf", event: e, sidecar: x, sidecar_delimiter: ";;"}', "one character"),
        ('{pattern: "*.pdf", event: e, sidecar: x, sidecar_format: yaml}', "json | xml | csv"),
    ],
)
def test_rule_problems(tmp_path: Path, rule: str, message: str) -> None:
    text = MINIMAL.replace('      - pattern: "*.pdf"\n        event: doc\n', f"      - {rule}\n")

    found = problems(tmp_path, text)

    assert any(message in p for p in found), found


def test_done_and_failed_must_differ_from_the_inbox_and_each_other(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "  - path: inbox\n", "  - path: inbox\n    done: inbox\n    failed: inbox\n"
    )

    found = problems(tmp_path, text)

    assert any("done: must be another folder than the inbox" in p for p in found)


def test_the_same_inbox_twice_is_a_problem(tmp_path: Path) -> None:
    text = MINIMAL + '  - path: ./inbox/\n    rules: [{pattern: "*", event: e}]\n'

    assert any("same inbox as folders[0]" in p for p in problems(tmp_path, text))


# ---------------------------------------------------------------- secrets


def secret_config(tmp_path: Path, secret_line: str) -> str:
    return MINIMAL.replace("  api_secret: ${FLOWFLEX_API_SECRET}\n", secret_line)


def test_a_secret_file_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "api_secret"
    secret.write_text("from-a-file\n")
    secret.chmod(0o600)

    config = load(
        write(tmp_path, secret_config(tmp_path, f"  api_secret_file: {secret}\n")), environ=ENV
    )

    assert config.api.api_secret == "from-a-file"


def test_a_secret_file_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    secret = tmp_path / "api_secret"
    secret.write_text("leaky\n")
    secret.chmod(0o644)

    [message] = problems(tmp_path, secret_config(tmp_path, f"  api_secret_file: {secret}\n"))

    assert "can be read by every user (mode 0644)" in message
    assert f"chmod 600 {secret}" in message
    assert "leaky" not in message


def test_a_secret_file_must_hold_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "api_secret"
    secret.write_text("one\ntwo\n")
    secret.chmod(0o600)

    [message] = problems(tmp_path, secret_config(tmp_path, f"  api_secret_file: {secret}\n"))

    assert "exactly one line" in message


def test_the_systemd_credential_is_used_when_no_secret_is_configured(tmp_path: Path) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "api_secret").write_text("from-systemd\n")
    (credentials / "api_secret").chmod(0o400)

    config = load(
        write(tmp_path, secret_config(tmp_path, "")),
        environ={**ENV, "CREDENTIALS_DIRECTORY": str(credentials)},
    )

    assert config.api.api_secret == "from-systemd"


def test_no_secret_at_all_says_where_one_can_come_from(tmp_path: Path) -> None:
    [message] = problems(tmp_path, secret_config(tmp_path, ""))

    assert "api_secret_file" in message
    assert "systemd credential" in message


def test_a_literal_secret_in_a_world_readable_config_is_warned(tmp_path: Path) -> None:
    path = write(tmp_path, secret_config(tmp_path, "  api_secret: literal-secret\n"))
    path.chmod(0o644)

    config = load(path, environ=ENV)

    [warning] = config.warnings
    assert "every user can read" in warning
    assert "chmod 600" in warning
    assert "literal-secret" not in warning
    assert "literal-secret" not in repr(config)


def test_no_secret_in_the_config_repr(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL), environ=ENV)

    assert "secret-from-env" not in repr(config)
    assert os.fspath(config.source).endswith("config.yaml")


def test_a_rule_checks_the_format_and_waits_600_s_for_a_cut_short_file_by_default(
    tmp_path: Path,
) -> None:
    [rule] = load(write(tmp_path, MINIMAL), environ=ENV).folders[0].rules

    assert rule.verify_format is True
    assert rule.incomplete_timeout == 600


def test_verify_format_and_incomplete_timeout_are_read(tmp_path: Path) -> None:
    text = MINIMAL + "        verify_format: false\n        incomplete_timeout: 30\n"

    [rule] = load(write(tmp_path, text), environ=ENV).folders[0].rules

    assert rule.verify_format is False
    assert rule.incomplete_timeout == 30


def test_verify_format_and_incomplete_timeout_of_the_wrong_kind_are_named(tmp_path: Path) -> None:
    text = MINIMAL + '        verify_format: "no"\n        incomplete_timeout: -1\n'

    found = problems(tmp_path, text)

    assert any(
        "folders[0].rules[0].verify_format: expected true or false, got text 'no'" in p
        for p in found
    ), found
    assert any(
        "folders[0].rules[0].incomplete_timeout: expected a number 0 or more, got -1" in p
        for p in found
    ), found


def test_yes_no_on_off_are_text_not_booleans_in_keys_and_values(tmp_path: Path) -> None:
    """YAML 1.1 read them as booleans: a payload key `no` was sent as "False"."""
    text = MINIMAL.replace('pattern: "*.pdf"', r"regex: '^S-(?P<num>\d+)\.pdf$'") + (
        "        payload: {no: '{match.num}', on: off, 1: yes, flag: true}\n"
    )

    [rule] = load(write(tmp_path, text), environ=ENV).folders[0].rules

    found = match([rule], "S-77.pdf")
    assert found is not None
    body = payload(found, sidecar=MISSING, assets={"file": "asset_1"})
    assert body == {"no": "77", "on": "off", "1": "yes", "flag": True}


def test_a_yaml_1_1_boolean_where_true_or_false_is_wanted_is_named(tmp_path: Path) -> None:
    text = MINIMAL.replace("  - path: inbox\n", "  - path: inbox\n    poll: yes\n")

    [problem] = problems(tmp_path, text)

    assert "folders[0].poll: expected true or false, got text 'yes'" in problem


def test_the_state_dir_is_the_units_then_roots_the_services_then_the_users() -> None:
    unit = {"STATE_DIRECTORY": "/var/lib/flowflexd", "HOME": "/home/op"}
    user = {"HOME": "/home/op"}

    assert default_state_dir(unit, euid=998) == Path("/var/lib/flowflexd")
    # The operator's `status` as root reads what the service writes.
    assert default_state_dir(user, euid=0) == Path("/var/lib/flowflexd")
    assert default_state_dir(user, euid=1000) == Path("/home/op/.local/state/flowflexd")
    assert default_state_dir({**user, "XDG_STATE_HOME": "/x"}, euid=1000) == Path("/x/flowflexd")


def test_one_inbox_named_twice_through_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "inbox")
    path = write(
        tmp_path,
        """
        flowflex: {base_url: "https://api.flowflex.ai", api_key: k, api_secret: s,
                   integration_code: c}
        folders:
          - {path: inbox, rules: [{pattern: "*.pdf", event: a}]}
          - {path: alias, done: alias-done, failed: alias-failed,
             rules: [{pattern: "*.pdf", event: b}]}
        """,
    )
    with pytest.raises(ConfigError, match=r"folders\[1\]\.path: same inbox as folders\[0\]"):
        load(path, environ=ENV)


def test_done_and_failed_may_end_in_dated_folders_below_a_fixed_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        flowflex: {base_url: "https://api.flowflex.ai", api_key: k, api_secret: s,
                   integration_code: c}
        folders:
          - path: inbox
            done: "archive/done/{date:%Y}/{date:%m}/{dir}"
            failed: failed
            rules: [{pattern: "*.pdf", event: a}]
        """,
    )
    [folder] = load(path, environ=ENV).folders

    assert folder.done == tmp_path / "archive" / "done"
    assert folder.done_below is not None
    assert folder.done_below.source == "{date:%Y}/{date:%m}/{dir}"
    assert (folder.failed, folder.failed_below) == (tmp_path / "failed", None)


@pytest.mark.parametrize(
    ("done", "problem"),
    [
        ("{date:%Y}", "needs a folder before its first placeholder"),
        ("done/{date:%Y}/../../etc", "may not climb out of its folder"),
        ("done/{name}", "{name} cannot be used here"),
        ("done/{date}", "give a strftime format"),
    ],
)
def test_a_done_template_that_cannot_work_is_refused_at_load(
    tmp_path: Path, done: str, problem: str
) -> None:
    path = write(
        tmp_path,
        f"""
        flowflex: {{base_url: "https://api.flowflex.ai", api_key: k, api_secret: s,
                   integration_code: c}}
        folders:
          - path: inbox
            done: "{done}"
            rules: [{{pattern: "*.pdf", event: a}}]
        """,
    )
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load(path, environ=ENV)


def test_a_folder_with_a_manifest_rule_cannot_fail_unmatched_files(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        '      - pattern: "*.pdf"\n        event: doc\n',
        '      - {manifest: "*.csv", event: e, file_column: "{row.F}"}\n',
    ).replace("    rules:\n", "    unmatched: fail\n    rules:\n")

    found = problems(tmp_path, text)

    assert any("unmatched: fail would set aside the documents a manifest names" in p for p in found)


DESTINATIONS = """
destinations:
  sales:
    base_url: https://api.flowflex.ai
    api_key: cik_sales
    api_secret_file: sales.secret
    integration_code: ic_sales
    max_events_per_second: 20
  support:
    base_url: https://api.flowflex.ai
    api_key: cik_support
    integration_code: ic_support
folders:
  - path: sales
    destination: sales
    rules:
      - {pattern: "ESC-*.pdf", event: escalated, destination: support}
      - {pattern: "*.pdf", event: sale}
  - path: support
    destination: support
    rules:
      - {pattern: "*.pdf", event: ticket}
"""


def test_several_destinations_each_with_its_secret_and_limits(tmp_path: Path) -> None:
    secret = tmp_path / "sales.secret"
    secret.write_text("sales-secret\n")
    secret.chmod(0o600)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "support.api_secret").write_text("support-secret\n")
    (credentials / "support.api_secret").chmod(0o600)

    config = load(
        write(tmp_path, DESTINATIONS),
        environ={**ENV, "CREDENTIALS_DIRECTORY": str(credentials)},
    )

    sales, support = config.destinations
    assert (sales.name, sales.api.api_secret, sales.max_events_per_second) == (
        "sales",
        "sales-secret",
        20,
    )
    assert (support.name, support.api.api_secret, support.max_events_per_second) == (
        "support",
        "support-secret",  # the systemd credential named support.api_secret
        None,
    )
    assert config.api is sales.api  # the first, for what knows one API
    sales_folder, support_folder = config.folders
    assert sales_folder.destination_of("escalation") == "sales"  # no such rule: the folder's
    assert [sales_folder.destination_of(r.name) for r in sales_folder.rules] == [
        "support",
        "sales",
    ]
    assert support_folder.destination == "support"


def test_the_flowflex_block_is_the_default_destination(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.dedent(
        """
        destinations:
          crm: {base_url: https://crm.example, api_key: k2, api_secret: s2, integration_code: c2}
        """
    )
    config = load(write(tmp_path, text), environ=ENV)

    assert [d.name for d in config.destinations] == ["default", "crm"]
    assert config.folders[0].destination == "default"  # unless it says otherwise


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("destination: sales", "destination: marketing"), "no destination named 'marketing'"),
        (("    destination: sales\n", ""), "destination: required with several destinations"),
        (("  sales:", "  bad name!:"), "a destination's name is letters, digits"),
    ],
)
def test_destination_problems_are_named(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    secret = tmp_path / "sales.secret"
    secret.write_text("s\n")
    secret.chmod(0o600)
    text = DESTINATIONS.replace(*change, 1).replace(
        "    integration_code: ic_support",
        "    integration_code: ic_support\n    api_secret: x",
    )

    found = problems(tmp_path, text)

    assert any(message in p for p in found), found


def test_a_default_destination_twice_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + "destinations:\n  default: {base_url: https://x.example}\n"
    assert any("the destination named default already" in p for p in problems(tmp_path, text))
