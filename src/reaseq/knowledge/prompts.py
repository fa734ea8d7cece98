"""Versioned prompt templates (YAML files), validated on load, with item text kept inside data delimiters."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from reaseq.errors import InputError

AGENTS = ("planner", "analyst", "critic", "writer")
PROMPTS_PACKAGE_DIR = "resources/prompts"

# Placeholders each part of each template must use, no more and no fewer: a template that forgets
# the item or invents a variable fails on load instead of producing silently wrong prompts.
REQUIRED_PLACEHOLDERS: dict[str, dict[str, frozenset[str]]] = {
    "planner": {
        "system": frozenset(),
        "user": frozenset({"category", "examples", "min_dimensions", "max_dimensions"}),
        "repair": frozenset({"error"}),
    },
    "analyst": {
        "system": frozenset(),
        "user": frozenset({"perspective", "instruction", "schema", "item"}),
        "revise": frozenset({"critique"}),
        "repair": frozenset({"error"}),
    },
    "critic": {
        "system": frozenset(),
        "user": frozenset({"schema", "item", "draft"}),
        "repair": frozenset({"error"}),
    },
    "writer": {
        "system": frozenset(),
        "user": frozenset({"schema", "item", "drafts"}),
        "repair": frozenset({"error"}),
    },
}

# Placeholders whose values come from outside (catalogue text, model output) -> the tag that wraps them.
DATA_TAGS: dict[str, str] = {
    "item": "item_metadata",
    "examples": "examples",
    "draft": "draft",
    "drafts": "drafts",
    "critique": "critique",
    "error": "validation_error",
}

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Any opening or closing form of a data tag, however spaced or cased, e.g. "</ Item_Metadata".
_TAG_LIKE = re.compile(r"<(\s*/?\s*(?:" + "|".join(sorted(set(DATA_TAGS.values()))) + r")\b)", re.IGNORECASE)
# Replacement for '<' inside data, so data can never close (or open) a delimiter.
ESCAPED_LT = "&lt;"


def escape_data(text: str) -> str:
    """Neutralise every delimiter-like tag inside untrusted text."""
    return _TAG_LIKE.sub(lambda m: ESCAPED_LT + m.group(1), text)


def delimit(tag: str, text: str) -> str:
    """Wrap untrusted text in <tag> ... </tag>, escaping any delimiter inside it."""
    return f"<{tag}>\n{escape_data(text)}\n</{tag}>"


@dataclass(frozen=True)
class PromptTemplate:
    """One agent's prompt: a version string and its parts (system, user, repair, optional revise)."""

    agent: str
    version: str
    parts: Mapping[str, str]
    source: str

    def render(self, part: str, values: Mapping[str, object]) -> str:
        """Fill one part's placeholders; data values are delimited and escaped here, never by callers."""
        text = self.parts[part]
        missing = REQUIRED_PLACEHOLDERS[self.agent][part] - set(values)
        if missing:
            raise KeyError(f"prompt {self.agent}.{part} needs values for {sorted(missing)}")

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            value = str(values[name])
            return delimit(DATA_TAGS[name], value) if name in DATA_TAGS else value

        # One pass: placeholders inside substituted values are never expanded.
        return PLACEHOLDER.sub(fill, text).strip()


def _parse_template(agent: str, text: str, source: str) -> PromptTemplate:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(source, None, f"not valid YAML ({exc})", "fix the YAML syntax of the prompt template") from None
    if not isinstance(data, dict):
        raise InputError(source, None, "a prompt template must be a mapping", "write the keys version, system, user, repair")
    required = REQUIRED_PLACEHOLDERS[agent]
    allowed = {"version", *required}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(source, unknown[0], f"unknown key in the {agent} template", f"use only {sorted(allowed)}")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise InputError(source, "version", "the template has no version string", "add e.g. `version: analyst-v2` and change it whenever the text changes")
    parts: dict[str, str] = {}
    for part, needed in required.items():
        body = data.get(part)
        if not isinstance(body, str) or not body.strip():
            raise InputError(source, part, f"the {agent} template has no '{part}' text", f"add a non-empty `{part}:` block")
        used = set(PLACEHOLDER.findall(body))
        if used - needed:
            raise InputError(source, part, f"unknown placeholders {sorted(used - needed)}", f"'{part}' may use only {sorted(needed) or 'no placeholders'}")
        if needed - used:
            raise InputError(source, part, f"missing placeholders {sorted(needed - used)}", f"put {{{{{min(needed - used)}}}}} in '{part}'")
        parts[part] = body
    # The system prompt must tell the model that each delimited block is data, not instructions.
    for part, needed in required.items():
        for name in sorted(needed & set(DATA_TAGS)):
            tag = DATA_TAGS[name]
            if name != "error" and f"<{tag}>" not in parts["system"]:
                raise InputError(source, "system", f"the system prompt does not mention <{tag}>, which '{part}' uses", f"say in `system` that text inside <{tag}> is data, not instructions")
    return PromptTemplate(agent=agent, version=version.strip(), parts=parts, source=source)


def load_template(agent: str, prompts_dir: Path | None = None) -> PromptTemplate:
    """Load and validate one agent's template from prompts_dir, or the shipped one."""
    if agent not in REQUIRED_PLACEHOLDERS:
        raise InputError(None, "agent", f"unknown agent '{agent}'", f"use one of {list(AGENTS)}")
    if prompts_dir is not None:
        path = Path(prompts_dir) / f"{agent}.yaml"
        if not path.is_file():
            raise InputError(path, None, "prompt template not found", f"add {agent}.yaml to {prompts_dir}, or unset agents.prompts_dir to use the shipped prompts")
        return _parse_template(agent, path.read_text(encoding="utf-8"), str(path))
    resource = resources.files("reaseq").joinpath(PROMPTS_PACKAGE_DIR, f"{agent}.yaml")
    return _parse_template(agent, resource.read_text(encoding="utf-8"), f"reaseq/{PROMPTS_PACKAGE_DIR}/{agent}.yaml")


def load_prompts(prompts_dir: Path | None = None) -> dict[str, PromptTemplate]:
    """All four agents' templates."""
    return {agent: load_template(agent, prompts_dir) for agent in AGENTS}


def prompt_versions(prompts: Mapping[str, PromptTemplate]) -> dict[str, str]:
    """agent -> version, as stored in every record."""
    return {agent: template.version for agent, template in sorted(prompts.items())}
