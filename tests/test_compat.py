"""Each use of a framework's internals (hbt.compat) against the installed Lightning, torch and Hydra: an
upgrade that moves one fails here, in the one test of the one function to change."""

import inspect
import os

import lightning as L
import torch

from hbt import compat


def quiet_trainer() -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)


def test_attached_trainer_is_none_until_a_trainer_holds_the_module():
    module = L.LightningModule()
    assert compat.attached_trainer(module) is None
    trainer = quiet_trainer()
    module.trainer = trainer
    assert compat.attached_trainer(module) is trainer


def test_a_graceful_stop_is_what_lightnings_loop_reads_as_sigterm():
    trainer = quiet_trainer()
    assert not trainer.received_sigterm
    compat.request_graceful_stop(trainer)
    assert trainer.received_sigterm  # Lightning's public view of the flag its loop stops on


def test_full_state_dicts_are_gathered_without_cpu_offload_inside_the_block():
    import lightning.pytorch.strategies.fsdp as lightning_fsdp

    original = lightning_fsdp._get_full_state_dict_context
    # The replacement takes what Lightning passes to the original.
    assert list(inspect.signature(original).parameters)[:3] == ["module", "world_size", "rank0_only"]
    with compat.full_state_dicts_in_place():
        replaced = lightning_fsdp._get_full_state_dict_context
        assert replaced is not original
        assert hasattr(replaced(torch.nn.Linear(2, 2), world_size=1), "__enter__")
    assert lightning_fsdp._get_full_state_dict_context is original


def test_fsdp_reads_the_full_precision_switch_set_for_the_block_only(monkeypatch):
    from torch.distributed.fsdp import _flat_param

    assert _flat_param._FSDP_USE_FULL_PREC_IN_EVAL == compat.FSDP_FULL_PRECISION_IN_EVAL  # the name torch reads
    monkeypatch.delenv(compat.FSDP_FULL_PRECISION_IN_EVAL, raising=False)
    with compat.fsdp_full_precision_in_eval():
        assert os.environ[compat.FSDP_FULL_PRECISION_IN_EVAL] == "1"
    assert compat.FSDP_FULL_PRECISION_IN_EVAL not in os.environ
    monkeypatch.setenv(compat.FSDP_FULL_PRECISION_IN_EVAL, "0")
    with compat.fsdp_full_precision_in_eval():
        pass
    assert os.environ[compat.FSDP_FULL_PRECISION_IN_EVAL] == "0"


def test_hydras_parser_reads_the_flags_and_overrides_of_a_command_line():
    args = compat.hydra_args_parser().parse_args(["-m", "sampler.ratio=0,1", "model=me5_small"])
    assert args.multirun and args.overrides == ["sampler.ratio=0,1", "model=me5_small"]
    assert not compat.hydra_args_parser().parse_args(["--cfg", "job"]).multirun


def test_the_processes_lightnings_launcher_started_are_where_hbt_reads_them():
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    assert launcher.procs == []  # the attribute hbt reads (filled as it starts the other ranks)
    assert compat.launched_processes(quiet_trainer()) == []  # one process: none


def test_the_cpu_fsdp_strategy_overrides_a_method_lightnings_strategy_has():
    from lightning.pytorch.strategies import FSDPStrategy

    assert callable(getattr(FSDPStrategy, "_setup_model", None))
    strategy = compat.cpu_fsdp_strategy(sharding_strategy="FULL_SHARD")
    assert isinstance(strategy, FSDPStrategy) and type(strategy)._setup_model is not FSDPStrategy._setup_model


def test_torch_compile_settings_hold_inside_their_blocks_only():
    import torch._inductor.config
    import torch.fx.experimental._config

    before = (torch._inductor.config.freezing, torch.fx.experimental._config.use_duck_shape)
    with compat.inductor_freezing(), compat.without_duck_shaping():
        assert torch._inductor.config.freezing is True and torch.fx.experimental._config.use_duck_shape is False
    assert (torch._inductor.config.freezing, torch.fx.experimental._config.use_duck_shape) == before
    assert all(issubclass(error, Exception) for error in compat.compile_errors())


def test_a_datasets_fingerprint_follows_its_content():
    import datasets

    table = datasets.Dataset.from_dict({"a": [1, 2]})
    changed = table.map(lambda row: {"a": row["a"] + 1})
    assert isinstance(compat.dataset_fingerprint(table), str) and compat.dataset_fingerprint(table)
    assert compat.dataset_fingerprint(changed) != compat.dataset_fingerprint(table)


def test_default_store_is_the_process_groups_store(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        store = compat.default_store()
        store.set("hbt-test", "1")
        assert store.get("hbt-test") == b"1" and store.multi_get(["hbt-test"]) == [b"1"]
    finally:
        dist.destroy_process_group()


def test_lightnings_child_process_observer_can_be_given_nothing_to_watch():
    import subprocess
    import sys

    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    child.wait()
    observer = _ChildProcessObserver(main_pid=-1, child_processes=[child], sleep_period=3600)
    observer.start()  # sleeps an hour before its first look: nothing is killed here
    try:
        assert compat.stop_child_process_observer() >= 1
        assert observer._run() is True  # nothing left to watch: it reports finished, and kills no one
    finally:
        observer._finished = True
