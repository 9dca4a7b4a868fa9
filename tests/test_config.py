import argparse
import pytest

from lossless import config
from lossless.errors import ConfigError


def test_profiles_have_their_data_part():
    assert config.load_profile("smoke").dataset == "synthetic"
    cpu = config.load_profile("cpu")
    assert (cpu.dataset, cpu.labels_per_class, cpu.val_per_class) == ("fashion-mnist", 32, 100)
    assert config.load_profile("paper").dataset == "stl10"
    assert set(config.available_profiles()) >= {"smoke", "cpu", "paper"}


def test_overrides_parse_yaml_scalars_and_win():
    cfg = config.load_profile("cpu", ["seed=3", "dataset=synthetic", "data_root=null"])
    assert cfg.seed == 3 and cfg.dataset == "synthetic" and cfg.data_root is None
    assert config.load_profile("cpu", {"seed": 4}, seed=5).seed == 5


def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="labels_per_class"):
        config.load_profile("cpu", ["label_per_class=3"])


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="seed='three'"):
        config.load_profile("cpu", ["seed=three"])
    with pytest.raises(ConfigError, match="key=value"):
        config.parse_overrides(["seed"])


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="smoke"):
        config.load_profile("laptop")


def test_from_namespace_reads_papermill_injected_variables(tmp_path):
    # papermill -f smoke.yaml injects every key of the file as a variable
    namespace = {"profile": "smoke", "seed": 7, "unrelated_variable": 1}
    cfg = config.from_namespace(namespace)
    assert cfg.profile == "smoke" and cfg.dataset == "synthetic" and cfg.seed == 7


def test_a_yaml_file_is_a_profile(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("dataset: synthetic\nseed: 11\n")
    cfg = config.load_profile(str(path))
    assert cfg.seed == 11 and cfg.profile == "mine"


def test_a_records_command_parses_back_to_the_arguments_that_made_it():
    """The command a record keeps (cli.experiment_command) gives, parsed again, the arguments of
    the call that wrote the record: every flag of `lossless experiment` set away from its default,
    the seeds it ran (not the None of a default), and overrides with spaces; --quiet dropped. A
    flag added to the parser but not to EXPERIMENT_FLAGS fails here."""
    import shlex
    from lossless import cli
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {a.dest for a in sub.choices["experiment"]._actions if a.option_strings} - {
        "help", "seeds", "profile", "quiet"}
    assert flags == {dest for dest, _ in cli.EXPERIMENT_FLAGS}
    argv = ["experiment", "claims", "--profile", "smoke", "--quiet", "--strategies", "random,margin",
            "--recipes", "a,b", "--screen-epochs", "4", "--pilot-seeds", "2", "--finalists", "3",
            "--out", "/tmp/my records/c.json", "--record", "--all-rules", "--fixmatch-seeds", "2",
            "ssl_epochs=3", "pl_rounds=3,2,1", "runs_dir=/tmp/a b"]
    for given in (argv, argv[:4], ["experiment", "section4", "compare_epochs=18"]):
        args = cli.parse_args(given)
        command = cli.experiment_command(args, 7)
        assert command.startswith("lossless experiment ") and "--quiet" not in command
        again = cli.parse_args(shlex.split(command)[1:])
        assert again.seeds == 7
        assert {k: v for k, v in vars(again).items() if k not in ("seeds", "quiet", "func")} == {
            k: v for k, v in vars(args).items() if k not in ("seeds", "quiet", "func")}
