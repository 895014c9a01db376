"""Every click option that sets a field of a settings dataclass takes its default from that field (issue 20).

``--fps`` said 8.0 while ``SimulationOptions.fps`` said 2.0: two copies of one default drift. The options read
their fields through :func:`mvg_rt.cli_types.default_of`; these tests keep it that way for every command.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import click
import pytest

from mvg_rt.cli import cli
from mvg_rt.cli_types import SETTINGS, FieldDefault, settings_class

# Options whose default belongs to the command line, not to a settings field, and why.
PRESET = "a preset's name, not a field (test_the_default_preset_is_the_settings_default checks it)"
CLI_OWN_DEFAULTS = {
    ("simulate", "transitions"): PRESET,
    ("batch", "transitions"): PRESET,
    ("train-demo", "scale"): "a multiplier of DemoTrainingConfig's step budgets (1.0: the budgets as configured)",
    ("eval", "clip"): "which clip --strip shows",
    ("make-tiny-model", "seed"): "the seed argument of build_models: no settings dataclass",
}


def _options() -> list[tuple[str, click.Option]]:
    return [(name, param) for name, command in sorted(cli.commands.items()) for param in command.params
            if isinstance(param, click.Option)]


def _read_settings(command: click.Command) -> list[type]:
    """The settings dataclasses that the command's options read their defaults from."""
    names = {param.default.settings for param in command.params if isinstance(param.default, FieldDefault)}
    return [settings_class(name) for name in sorted(names)]


def test_every_settings_class_is_a_dataclass_that_its_module_defines():
    for name, module in SETTINGS.items():
        cls = settings_class(name)
        assert dataclasses.is_dataclass(cls) and cls.__module__ == module, name


@pytest.mark.parametrize(("command", "option"), [(c, p) for c, p in _options() if isinstance(p.default, FieldDefault)],
                         ids=lambda x: x if isinstance(x, str) else x.name)
def test_an_option_reads_its_field_and_its_type_takes_the_value(command: str, option: click.Option):
    source = option.default
    field = {f.name: f for f in dataclasses.fields(settings_class(source.settings))}[source.name]
    expected = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    context = click.Context(cli.commands[command])
    value = option.get_default(context)
    assert value == (",".join(expected) if source.comma_list else expected)
    if value is not None:
        option.type_cast_value(context, value)  # e.g. within the option's range (mvg_rt.limits)


def test_no_option_restates_a_settings_default():
    """A non-flag option with a default of its own must be listed above with its reason; a flag (off unless
    given) must agree with a field of its name where the command's settings have one."""
    restated = []
    for name, option in _options():
        command = cli.commands[name]
        value = option.to_info_dict()["default"]  # None where the option has none (click's own sentinel hidden)
        if isinstance(option.default, FieldDefault) or value in (None, ()):
            continue
        if not option.is_flag:
            if (name, option.name) not in CLI_OWN_DEFAULTS:
                restated.append(f"{name} --{option.name}: read it with cli_types.default_of, or list it in "
                                "CLI_OWN_DEFAULTS with the reason")
            continue
        for settings in _read_settings(command):
            field = {f.name: f for f in dataclasses.fields(settings)}.get(option.name)
            if field is not None and field.default != value:
                restated.append(f"{name} --{option.name}: {value!r} but {settings.__name__}.{field.name} is "
                                f"{field.default!r}")
    assert not restated, "\n".join(restated)


def test_the_default_preset_is_the_settings_default():
    from mvg_rt.runtime.pipelines.transition import TRANSITION_PRESETS, TransitionSettings

    preset = next(p for p in cli.commands["simulate"].params if p.name == "transitions").default
    assert TRANSITION_PRESETS[preset] == (TransitionSettings.sampler, TransitionSettings.steps)


def test_the_video_plays_at_8_fps_by_default():
    """8 fps is what ``mvg-rt simulate`` gave since the transition clips came (3da156b): a 16-frame clip in 2 s,
    the paper's 10 rounds in 19 s; 2 fps drew the same video out to 75 s."""
    from mvg_rt.simulation import SimulationOptions

    assert next(p for p in cli.commands["simulate"].params if p.name == "fps").get_default(
        click.Context(cli.commands["simulate"])) == 8.0
    assert SimulationOptions().fps == 8.0


def test_the_command_list_loads_no_settings_module():
    """``mvg-rt --help`` stays instant: the settings modules (torch) load only when a command needs a default."""
    code = ("import sys\nfrom mvg_rt.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
