"""Policy validation: every malformed policy gets an error naming file, line and field."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from moderation.adapters.policy_files import (
    MAX_POLICY_DEPTH,
    MAX_POLICY_NODES,
    edit_policy_text,
    exemplar_path,
    load_policies,
    load_policy_file,
    load_policy_text,
    policy_files_hash,
)
from moderation.core.policy import DEFAULT_TEMPLATES, Policy, PolicySet, policy_hash
from moderation.exceptions import (
    DuplicatePolicyError,
    PolicyError,
    PolicyValidationError,
    UnknownPolicyError,
)

REPO = Path(__file__).resolve().parent.parent

GOOD = textwrap.dedent(
    """\
    id: weapons
    version: 2
    description: Weapons.
    defaults:
      benign_prompts: [a kitchen]
    categories:
      - id: firearms
        description: Guns.
        severity: high
        prompts: [a handgun]
        benign_prompts: [a toy water pistol]
        thresholds: {review: 0.5, block: 0.85}
      - id: explosives
        description: Bombs.
        severity: critical
        prompts: [a bomb]
        thresholds:
          review: 0.4
          block: 0.9
        actions:
          block: {action: remove, reason_code: WEAPON_EXPLOSIVE}
    """
)


def _errors(text: str, name: str = "policies/weapons.yaml") -> list[str]:
    with pytest.raises(PolicyValidationError) as info:
        load_policy_text(text, source=name)
    return [str(issue) for issue in info.value.issues]


def test_good_policy_parses_with_defaults() -> None:
    policy = load_policy_text(GOOD, source="x.yaml")
    assert policy.id == "weapons" and policy.version == 2
    firearms = policy.category("firearms")
    assert policy.templates_for(firearms) == list(DEFAULT_TEMPLATES)
    assert policy.benign_for(firearms) == ["a toy water pistol", "a kitchen"]
    explosives = policy.category("explosives")
    assert explosives.actions.block.reason_code == "WEAPON_EXPLOSIVE"
    assert explosives.actions.review.action.value == "human_review"


def test_thresholds_out_of_order_names_file_line_and_field() -> None:
    bad = GOOD.replace("      block: 0.9", "      block: 0.3")
    assert _errors(bad) == [
        "policies/weapons.yaml:19: categories[1].thresholds.block: "
        "must be greater than review (0.4)"
    ]


def test_unknown_key_is_an_error_with_its_line() -> None:
    bad = GOOD.replace("    severity: high\n", "    severity: high\n    colour: red\n")
    assert _errors(bad) == [
        "policies/weapons.yaml:10: categories[0].colour: unknown key (check spelling; see "
        "`moderation policy schema`)"
    ]


def test_empty_prompt_list_and_bad_severity_reported_together() -> None:
    bad = GOOD.replace("prompts: [a bomb]", "prompts: []").replace("critical", "extreme")
    errors = _errors(bad)
    assert len(errors) == 2
    assert errors[0].startswith("policies/weapons.yaml:15: categories[1].severity:")
    assert errors[1].startswith("policies/weapons.yaml:16: categories[1].prompts:")


def test_duplicate_category_ids() -> None:
    bad = GOOD.replace("id: explosives", "id: firearms")
    assert _errors(bad) == [
        "policies/weapons.yaml:13: categories[1].id: duplicate category id 'firearms' "
        "(first at categories[0])"
    ]


def test_duplicate_yaml_keys_are_not_silently_overwritten() -> None:
    bad = GOOD.replace("version: 2\n", "version: 2\nversion: 3\n")
    assert _errors(bad) == ["policies/weapons.yaml:3: version: duplicate key 'version'"]


def test_category_without_any_contrast_prompt() -> None:
    bad = GOOD.replace("  benign_prompts: [a kitchen]\n", "  templates: ['a photo of {}']\n")
    errors = _errors(bad)
    assert errors == [
        "policies/weapons.yaml:13: categories[1].benign_prompts: no contrast prompts: give "
        "benign_prompts here or defaults.benign_prompts (a score is relative to what looks "
        "similar but is allowed)"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("prompts: [a handgun]", "prompts: [a handgun, A Handgun]", "is listed twice"),
        (
            "benign_prompts: [a toy water pistol]",
            "benign_prompts: [a handgun]",
            "is both positive and benign",
        ),
        ("version: 2", "version: 0", "greater than or equal to 1"),
        ("id: weapons", "id: Weapons!", "should match pattern"),
        ("review: 0.5", "review: 1.5", "less than or equal to 1"),
        (
            "  benign_prompts: [a kitchen]",
            "  templates: [a photo of]\n  benign_prompts: [a]",
            "must contain exactly one '{}'",
        ),
        ("reason_code: WEAPON_EXPLOSIVE", "reason_code: weapon explosive", "should match"),
    ],
)
def test_each_rule_is_enforced(old: str, new: str, expected: str) -> None:
    errors = _errors(GOOD.replace(old, new))
    assert any(expected in e for e in errors), errors
    assert all(e.startswith("policies/weapons.yaml:") for e in errors)


def test_invalid_yaml_names_the_line() -> None:
    errors = _errors("id: x\nversion: 1\ncategories: [\n  - a\n", "p.yaml")
    assert len(errors) == 1 and errors[0].startswith("p.yaml:") and "invalid YAML" in errors[0]


def test_empty_and_non_mapping_files() -> None:
    assert _errors("", "e.yaml") == ["e.yaml:1: empty policy file"]
    assert _errors("- a\n- b\n", "l.yaml") == ["l.yaml:1: a policy must be a mapping"]


def test_hash_ignores_comments_and_formatting() -> None:
    a = load_policy_text(GOOD)
    b = load_policy_text(
        "# comment\n"
        + GOOD.replace("{review: 0.5, block: 0.85}", "{ review: 0.50,   block: 0.85 }")
    )
    c = load_policy_text(GOOD.replace("block: 0.85", "block: 0.86"))
    assert policy_hash(a) == policy_hash(b) != policy_hash(c)


def test_policy_set_rejects_duplicate_ids_and_unknown_selection() -> None:
    policy = load_policy_text(GOOD)
    with pytest.raises(DuplicatePolicyError, match="'weapons' is defined more than once"):
        PolicySet([(policy, "a.yaml"), (policy, "b.yaml")])
    policies = PolicySet([(policy, "a.yaml")])
    assert [p.id for p in policies.select(None)] == ["weapons"]
    with pytest.raises(UnknownPolicyError, match="unknown policy 'nope'"):
        policies.select(["nope"])


def test_load_policies_collects_issues_from_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.replace("high", "huge"))
    (tmp_path / "b.yml").write_text("id: b\n")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(PolicyValidationError) as info:
        load_policies([tmp_path])
    sources = {issue.source for issue in info.value.issues}
    assert sources == {str(tmp_path / "a.yaml"), str(tmp_path / "b.yml")}


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyValidationError, match="cannot read"):
        load_policy_file(tmp_path / "missing.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("id: caf\xe9\n".encode("latin-1"))
    with pytest.raises(PolicyValidationError, match="not UTF-8"):
        load_policy_file(bad)


def test_starter_policies_are_valid_and_cover_the_core_harms() -> None:
    policies = load_policies([REPO / "policies"])
    assert {"nudity", "violence", "weapons", "drugs", "self_harm", "hate_symbols"} <= set(policies)
    for policy_id in policies:
        for category in policies[policy_id].categories:
            assert policies[policy_id].benign_for(category), (policy_id, category.id)


def test_json_schema_describes_the_format() -> None:
    schema = Policy.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) >= {"id", "version", "description", "categories"}
    json.dumps(schema)


# --- hostile operator files ----------------------------------------------------------------------

#: 390 bytes of YAML that expand to 10^9 list items when aliases are followed.
ALIAS_BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)


def test_an_alias_bomb_is_refused_at_its_first_alias(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB.encode()) < 400
    with pytest.raises(PolicyValidationError) as info:
        load_policy_file(path)
    (issue,) = info.value.issues
    assert str(issue).startswith(f"{path}:2: invalid YAML: aliases (*a) are not allowed")
    # the reload fingerprint reads the same file without following the aliases either
    assert policy_files_hash([path])


def test_a_policy_without_aliases_may_still_use_anchors() -> None:
    text = GOOD.replace("prompts: [a handgun]", "prompts: &guns [a handgun]")
    assert load_policy_text(text).category("firearms").prompts == ["a handgun"]


def test_node_count_and_nesting_are_bounded() -> None:
    many = GOOD + "x: [" + ",".join(["1"] * (MAX_POLICY_NODES + 1)) + "]\n"
    (issue,) = _errors(many, "n.yaml")
    assert issue.startswith("n.yaml:") and f"more than {MAX_POLICY_NODES} YAML nodes" in issue
    deep = "id: x\nversion: 1\nx: " + "[" * 200_000 + "]" * 200_000 + "\n"
    (issue,) = _errors(deep, "d.yaml")
    assert issue == f"d.yaml:3: invalid YAML: nested more than {MAX_POLICY_DEPTH} levels deep"
    with pytest.raises(PolicyValidationError, match="aliases"):
        edit_policy_text(ALIAS_BOMB, version=3)


def _with_exemplar(path: str) -> str:
    return GOOD.replace(
        "    prompts: [a handgun]\n",
        f"    prompts: [a handgun]\n    exemplars:\n      positive: [{path}]\n",
    )


@pytest.mark.parametrize("escape", ["../../etc/hostname", "sub/../../outside.png", "link.png"])
def test_exemplar_paths_stay_inside_the_policy_folder(tmp_path: Path, escape: str) -> None:
    folder = tmp_path / "policies"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"secret")
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    path = folder / "weapons.yaml"
    text = _with_exemplar(escape)
    path.write_text(text)
    line = text[: text.index("positive:")].count("\n") + 1
    with pytest.raises(PolicyValidationError) as info:
        load_policy_file(path)
    (issue,) = [str(i) for i in info.value.issues]
    assert issue == (
        f"{path}:{line}: categories[0].exemplars.positive[0]: {escape}: leads out of the "
        f"policy's folder {folder}"
    )
    with pytest.raises(PolicyError, match="leads out of the policy's folder"):
        exemplar_path(folder, escape)


def test_an_exemplar_inside_the_folder_is_read(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "gun.png").write_bytes(b"not checked here")
    path = tmp_path / "weapons.yaml"
    path.write_text(_with_exemplar("img/../img/gun.png"))
    exemplars = load_policy_file(path).category("firearms").exemplars
    assert exemplars is not None and exemplars.positive[0].sha256 is not None
