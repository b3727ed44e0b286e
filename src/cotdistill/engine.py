"""The one place that talks to DeepSpeed: process group, ZeRO-3 aware loading, steps, checkpoints, gathers.

Everything else in cotdistill sees this small interface, so the training loop, the evaluator and the
exporter read the same on one CPU process, on two gloo ranks here, or on many GPUs.

Loading rule: ``load_model`` keeps an ``HfDeepSpeedConfig`` alive while ``from_pretrained`` runs, so under
ZeRO-3 every parameter is partitioned as it is read from disk. A random model is never built inside
``deepspeed.zero.Init`` directly (a random GPT-2 built that way started at loss ~44 instead of ln V);
tiny test models are saved first and then loaded through this same path.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from cotdistill.ds_config import zero_stage
from cotdistill.runtime_env import ops_to_build, set_deepspeed_log_level

log = logging.getLogger(__name__)

UNIVERSAL_TAG = "universal"  # <checkpoint>/universal: a checkpoint resharded for another world size
MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_single_process_env() -> None:
    """Let ``python launchers/x.py`` run as a world of one without a launcher."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def quiet_libraries() -> None:
    """One clear line per event: silence DeepSpeed's and transformers' per-step chatter."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    warnings.filterwarnings("ignore", message=".*torch.distributed.*deprecated.*")
    for name in ("DeepSpeed", "deepspeed", "torch.distributed", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is a hard dependency; this only guards odd installs
        pass


@contextmanager
def _silenced() -> Iterator[None]:
    with open(os.devnull, "w") as sink, redirect_stdout(sink), redirect_stderr(sink):
        yield


def _disable_cpu_shm_allreduce() -> None:
    """Keep DeepSpeed's CPU shared-memory all-reduce op out of the process group.

    We never use it (all collectives go through torch.distributed), and it leaves one
    /dev/shm/deepspeed_allreduce_buffer_* per job and port behind; a later job that reuses the port
    with another world size aborted at start-up here ("terminate called without an active exception").
    """
    if torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def share_cpu_threads() -> None:
    """Give each rank on a node its share of the cores when running on CPU.

    Every process defaults to one thread per core; two ranks on two cores then fight over them and a
    step took 9 s instead of 0.5 s here. An explicit OMP_NUM_THREADS always wins.
    """
    if "OMP_NUM_THREADS" in os.environ or torch.cuda.is_available():
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")) or 1)
    threads = max(1, _usable_cpus() // max(1, local_world))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


class Engine:
    """Distributed context plus, after ``initialize``, the DeepSpeed training engine."""

    def __init__(self, timeout_minutes: float = 30.0) -> None:
        quiet_libraries()
        _ensure_single_process_env()
        share_cpu_threads()
        import deepspeed

        set_deepspeed_log_level()  # WARNING, or INFO (config dumps) with COTDISTILL_VERBOSE=1
        self._deepspeed = deepspeed
        _disable_cpu_shm_allreduce()
        deepspeed.init_distributed(verbose=False, timeout=timedelta(minutes=timeout_minutes))
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        from deepspeed.accelerator import get_accelerator

        self._accelerator = get_accelerator()
        self.device = torch.device(self._accelerator.device_name(self.local_rank))
        if self.device.type != "cpu":
            # Before any model is built: zero.Init allocates on the *current* device of each rank.
            self._accelerator.set_device(self.local_rank)
        self._hf_ds_config: Any = None
        self.ds_config: dict[str, Any] | None = None
        self.ds: Any = None

    # -- distributed primitives ------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        self._dist.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few scalars over ranks (float64 on the communication device)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        self._dist.all_reduce(tensor)
        return tensor.tolist()

    def all_gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj)
        return out

    def device_memory_budget(self) -> int:
        """Bytes this rank may use for a replicated model: free GPU memory, or its share of available RAM.

        The smallest budget over all ranks, so every rank takes the same decision from it.
        """
        if self.device.type == "cuda":
            free = int(torch.cuda.mem_get_info(self.device)[0])
        else:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")) or 1)
            free = _available_ram() // max(1, local_world)
        return min(self.all_gather_objects(free))

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 does the work (e.g. build a tiny model) while the others wait, then they follow."""
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:
            if self.is_main:
                self.barrier()

    # -- model lifecycle --------------------------------------------------------------------------------

    def load_model(self, ds_config: dict[str, Any], loader: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """Run ``loader`` (a from_pretrained call) with DeepSpeed's ZeRO-3 config alive, and keep it alive."""
        from transformers.integrations import HfDeepSpeedConfig

        self.ds_config = ds_config
        if zero_stage(ds_config) == 3:
            self._hf_ds_config = HfDeepSpeedConfig(ds_config)
        return loader()

    @contextmanager
    def outside_zero3(self) -> Iterator[None]:
        """Build a model that is not partitioned while a ZeRO-3 student is live (e.g. an on-policy teacher held
        whole on every rank): transformers' ZeRO-3 config is set aside for the block and restored after."""
        from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

        held = self._hf_ds_config
        if held is not None:
            unset_hf_deepspeed_config()
        try:
            yield
        finally:
            if held is not None:
                set_hf_deepspeed_config(held)

    def partitioned_inference_model(self, ds_config: dict[str, Any], loader: Callable[[], torch.nn.Module]
                                    ) -> torch.nn.Module:
        """A second model beside this engine's, its weights partitioned over the ranks with ZeRO-3 for forward
        passes only (an on-policy teacher too large to hold whole on every rank), in its own DeepSpeed engine.

        ``loader`` (a from_pretrained call) runs under the second model's ZeRO-3 config; the student's
        transformers config is restored after, so its generation still finds it. Every forward of the returned
        module is a collective: all ranks must call it equally often.
        """
        from transformers.integrations import HfDeepSpeedConfig
        from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

        config = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler")}
        if zero_stage(config) != 3:
            raise ValueError(f"a partitioned inference model needs ZeRO stage 3, got {zero_stage(config)}")
        held = self._hf_ds_config
        scope = HfDeepSpeedConfig(config)  # transformers keeps a weak reference: alive while loading
        try:
            model = loader()
            wrapped, _, _, _ = self._deepspeed.initialize(model=model, config=config)
        finally:
            del scope
            if held is not None:
                set_hf_deepspeed_config(held)
            else:
                unset_hf_deepspeed_config()
        wrapped.eval()
        return wrapped

    def initialize(self, model: torch.nn.Module, ds_config: dict[str, Any] | None = None) -> None:
        """Wrap the model in a DeepSpeed engine with the optimizer the config names."""
        config = ds_config or self.ds_config
        if config is None:
            raise RuntimeError("Engine.initialize needs a DeepSpeed config (call load_model first)")
        self.ds_config = config
        missing = ops_to_build(config)
        if missing and self.is_main:  # a first run compiles for about a minute: say so rather than look hung
            logging.getLogger("cotdistill").info(
                "compiling DeepSpeed's %s op%s once into %s (about a minute on 2 CPU cores; later runs reuse it)",
                " and ".join(missing), "s" if len(missing) > 1 else "", os.environ.get("TORCH_EXTENSIONS_DIR"))
        params = [p for p in model.parameters() if p.requires_grad]
        import_muon_without_compiling()
        self.ds, _, _, _ = self._deepspeed.initialize(model=model, model_parameters=params, config=config)

    def initialize_inference(self, model: torch.nn.Module, ds_config: dict[str, Any]) -> None:
        """Wrap a model for forward/generate only (no optimizer), e.g. for partitioned evaluation."""
        config = dict(ds_config)
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        self.ds_config = config
        import_muon_without_compiling()
        self.ds, _, _, _ = self._deepspeed.initialize(model=model, config=config)

    def release_model(self) -> None:
        """Drop the current model and engine (e.g. between checkpoints) so their memory can be reused."""
        import gc

        self.ds = None
        self._hf_ds_config = None
        gc.collect()
        self._accelerator.empty_cache()

    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module

    @property
    def is_zero3(self) -> bool:
        return self.ds_config is not None and zero_stage(self.ds_config) == 3

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    def forward(self, **batch: Any) -> Any:
        """The model's forward on this rank's batch; tensors move to the device, flags pass as they are."""
        return self.ds(**{k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> None:
        """Micro-batch step: DeepSpeed applies the optimizer only at the accumulation boundary."""
        self.ds.step()

    def set_lr(self, lr: float) -> None:
        for group in self.ds.optimizer.param_groups:
            group["lr"] = lr

    def current_lr(self) -> float:
        """The learning rate the optimizer actually holds (read back, so logs show what was applied)."""
        return float(self.ds.optimizer.param_groups[0]["lr"])

    @property
    def optimizer_on_nvme(self) -> bool:
        """Whether ZeRO swaps the optimizer states to NVMe (offload_optimizer.device = nvme)."""
        return bool(self.ds.zero_optimization() and self.ds.zero_nvme_offload_optimizer())

    def grad_norm(self) -> float:
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def generate(self, gathered: bool = False, **kwargs: Any) -> torch.Tensor:
        """``generate`` that is safe under ZeRO-3: every rank joins every forward (synced_gpus).

        ``gathered`` (a training engine under ZeRO-3): the whole model is gathered on every rank once for the
        call and ZeRO-3's per-module hooks are set aside (DeepSpeed's ``unwrap_model_for_generation``), so each
        rank generates alone, without collectives per layer and token; it costs the full weights' memory on
        every rank for the call (`generation_fits_gathered`).
        """
        inputs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        if gathered and self.is_zero3:
            with torch.no_grad(), self.gathered_weights():
                return self.module.generate(**inputs)
        if self.is_zero3 and self.world_size > 1:
            inputs["synced_gpus"] = True
        with torch.no_grad():
            return self.module.generate(**inputs)

    @contextmanager
    def gathered_weights(self) -> Iterator[None]:
        """Inside the block this rank's ``module`` holds the whole model (a training engine under ZeRO-3; else a
        no-op) and runs forwards alone, without ZeRO-3's per-module hooks: DeepSpeed's
        ``unwrap_model_for_generation``. Collective on entry and exit; costs the full weights' memory."""
        if not self.is_zero3:
            yield
            return
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        with unwrap_model_for_generation(self.ds):
            yield

    def model_bytes(self) -> int:
        """Bytes of the whole model's weights in their training dtype (ZeRO-3 partitions counted whole)."""
        return sum(int(getattr(p, "ds_numel", p.numel())) * p.element_size() for p in self.module.parameters())

    def generation_fits_gathered(self, share: float = 0.25) -> bool:
        """Collective: whether every rank can hold the whole model for generation within ``share`` of its memory
        budget (`device_memory_budget`), leaving the rest to activations, the KV cache and training's own use."""
        return self.model_bytes() <= share * self.device_memory_budget()

    # -- checkpoints and export -------------------------------------------------------------------------

    def save_checkpoint(self, folder: Path, tag: str, client_state: dict[str, Any]) -> Exception | None:
        """Collective: every rank writes its partition of weights and optimizer state under folder/tag.

        Returns this rank's error (a full disk) instead of raising it, so the caller can let every rank
        agree on what happened: a raising rank would leave the others waiting in DeepSpeed's collectives.
        A rank whose write failed joins the collectives DeepSpeed (0.19.8) runs after its writes: ZeRO-3's
        checkpoint epilogue (an all-gather of the persistent parameters) and the closing barrier. The writes
        themselves hold none, and the folder must exist beforehand, so the opening ``makedirs`` (before a
        barrier) cannot fail. Measured: without the epilogue, 2 ranks hung on a full disk.
        """
        try:
            self.ds.save_checkpoint(str(folder), tag=tag, client_state=client_state, save_latest=False)
        except Exception as err:  # every rank must hear of it: the caller gathers the outcome
            epilogue = getattr(self.ds.optimizer, "checkpoint_event_epilogue", None)
            if epilogue is not None:
                epilogue()
            self.barrier()
            return err
        return None

    def checkpoint_size_estimate(self) -> int:
        """Bytes a checkpoint of this engine takes on disk, all ranks together, from parameter counts.

        Per trained parameter the fp32 master weight and both Adam moments (12 bytes), plus its 16-bit (or
        fp32) weight unless ZeRO-3 partitions it (then only the master weight is saved); frozen parameters
        only their weight. Used before the first checkpoint, when there is no earlier one to measure: a
        tiny GPT-2 on 2 ranks was estimated at 1.64 MB and took 1.59 MB.
        """
        total = 0
        for param in self.module.parameters():
            numel = int(getattr(param, "ds_numel", param.numel()))  # ZeRO-3 leaves partitions of numel 0
            weight = 0 if self.is_zero3 and param.requires_grad else param.element_size()
            total += numel * (weight + (12 if param.requires_grad else 0))
        return total + (self.world_size + 1) * (64 << 10)  # RNG states, model-state headers, recovery scripts

    def load_checkpoint(self, folder: Path, tag: str, saved_world_size: int | None = None) -> dict[str, Any]:
        """Collective: restore weights, optimizer state and the client state saved under folder/tag.

        A ZeRO checkpoint written by ``saved_world_size`` ranks other than this world size is resharded:
        rank 0 converts it once into DeepSpeed's universal checkpoint (``folder/universal``, see
        ``universal_checkpoint``) and every rank loads its new partition of the fp32 master weights and
        Adam moments from there, so training continues with the same optimizer state.
        """
        if saved_world_size is None or saved_world_size == self.world_size or not self.ds.zero_optimization():
            return self._load(folder, tag, universal=False)
        if self.ds.zero_nvme_offload_optimizer():
            raise RuntimeError(f"checkpoint {folder} was written by {saved_world_size} ranks and this job has "
                               f"{self.world_size}: DeepSpeed cannot reshard an NVMe-offloaded optimizer; resume "
                               f"on {saved_world_size} ranks, or with a config that offloads to CPU")
        return self._load(folder, self.universal_checkpoint(folder, tag), universal=True)

    def _load(self, folder: Path, tag: str, universal: bool) -> dict[str, Any]:
        # DeepSpeed reads `checkpoint.load_universal` only inside load_checkpoint (0.19.8: every reader is on
        # the load path), so it is switched on for this one load rather than fixed before initialize, when
        # nobody yet knows which world size wrote the checkpoint.
        config = self.ds._config
        before = config.load_universal_checkpoint
        config.load_universal_checkpoint = universal
        try:
            path, client_state = self.ds.load_checkpoint(str(folder), tag=tag, load_optimizer_states=True,
                                                         load_lr_scheduler_states=False)
        finally:
            config.load_universal_checkpoint = before
        if path is None:
            raise FileNotFoundError(f"DeepSpeed could not load checkpoint {folder}/{tag}")
        replay_adam_step_products(getattr(self.ds.optimizer, "optimizer", self.ds.optimizer), self.device)
        return client_state or {}

    def universal_checkpoint(self, folder: Path, tag: str) -> str:
        """Collective: make sure ``folder/universal`` holds the universal form of folder/tag; return its tag.

        Rank 0 converts (DeepSpeed's ``ds_to_universal``: per parameter the fp32 master weight and both
        Adam moments, unpartitioned, plus the optimizer's step count and hyper-parameters) into a temporary
        folder and renames it into place, so a crash mid-conversion leaves nothing that looks finished and
        the next resume converts again. A finished conversion is reused. The other ranks wait.
        """
        final = folder / UNIVERSAL_TAG
        problem = ""
        if self.is_main and not final.is_dir():
            import argparse
            import shutil
            import time

            from deepspeed.checkpoint.ds_to_universal import main as to_universal

            scratch = folder / f".{UNIVERSAL_TAG}-tmp"
            shutil.rmtree(scratch, ignore_errors=True)  # an interrupted conversion
            started = time.perf_counter()
            # ds_to_universal writes `latest_universal` beside its output folder: inside scratch, gone below.
            args = argparse.Namespace(input_folder=str(folder / tag), output_folder=str(scratch / UNIVERSAL_TAG),
                                      num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                      strict=True, inject_missing_state=True)
            try:
                with _silenced():  # it prints a banner and progress bars
                    to_universal(args)
                os.replace(scratch / UNIVERSAL_TAG, final)
                log.info("universal checkpoint written to %s in %.1f s", final, time.perf_counter() - started)
            except Exception as err:  # every rank must hear of it (the broadcast below)
                problem = f"converting {folder / tag} to a universal checkpoint failed: {err!r}"
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        elif self.is_main:
            log.info("reusing the universal checkpoint converted earlier: %s", final)
        problem = self.broadcast_object(problem)
        if problem:
            raise RuntimeError(problem)
        return UNIVERSAL_TAG

    def load_weights_only(self, folder: Path, tag: str) -> None:
        """Fill the (possibly partitioned) module from a ZeRO checkpoint written by any number of ranks.

        Rank 0 reads the checkpoint's fp32 master weights lazily, one tensor at a time, and scatters each
        into its partitioned parameter, so no rank ever holds the whole model. Works for an inference
        engine (no optimizer), where DeepSpeed's own ``load_checkpoint`` does not.
        """
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = {}
        if self.is_main:
            with _silenced():  # DeepSpeed prints a banner and progress bars while it parses the shards
                state = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag, lazy_mode=True)
        names = self.broadcast_object(sorted(state))  # rank 0's names reach every rank
        module = self.module
        params = dict(module.named_parameters())
        missing = sorted(set(params) - set(names))
        if missing:
            raise ValueError(f"checkpoint {folder} lacks weights for {missing[:5]}")
        for name, param in params.items():
            with self._deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=self.is_zero3):
                if self.is_main:
                    param.data.copy_(state[name].contiguous().to(param.dtype))
            if not self.is_zero3 and self.world_size > 1:  # a replicated model: every rank needs every weight
                self._dist.broadcast(param.data, src=0)

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Gather full weights one parameter at a time onto rank 0's CPU (others get None).

        Gathering parameter by parameter bounds the extra memory to one tensor, which is what lets an
        11B model be exported from a ZeRO-3 run.
        """
        module = self.module
        state: dict[str, torch.Tensor] = {}
        for name, param in module.named_parameters():
            if self.is_zero3:
                with self._deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    if self.is_main:
                        state[name] = param.detach().to("cpu", copy=True)
            elif self.is_main:
                state[name] = param.detach().to("cpu", copy=True)
        if self.is_main:
            persistent = set(module.state_dict(keep_vars=True))  # non-persistent buffers are not saved
            for name, buffer in module.named_buffers():
                if name in persistent:
                    state[name] = buffer.detach().to("cpu", copy=True)
        return state if self.is_main else None

    def close(self) -> None:
        """Tear the process group down cleanly, so the job exits without gloo's abort messages."""
        if self._dist.is_initialized():
            try:
                self._dist.barrier()
            finally:
                self._dist.destroy_process_group()


def replay_adam_step_products(optimizer: Any, device: torch.device) -> None:
    """Put DeepSpeed's CPU Adam kernel where an uninterrupted run's would be after the restored step.

    The kernel (0.19.8 ``Adam_Optimizer::IncrementStep``; behind ``DeepSpeedCPUAdam`` with CPU offload and
    behind ``FusedAdam`` on the CPU accelerator) keeps beta^t for the bias correction as a float running
    product, one multiplication per step, and recomputes it with ``pow`` when it meets a step that is not the
    next one, as the first step after a resume is. The two round differently at most steps, so a resumed run
    updated the weights a few ulps differently from the second step on, and the difference grew (5e-6 in the
    loss one step later, 4e-2 sixty steps later). Replaying steps 1..t on a one-element scratch tensor
    (learning rate 0) rebuilds the same product. torch's Adam and the CUDA fused kernel compute the correction
    from the saved step alone and need nothing.
    """
    steps = [int(state["step"]) for state in getattr(optimizer, "state", {}).values() if "step" in state]
    if not steps or not getattr(optimizer, "param_groups", None):
        return
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    params, grads, exp_avg, exp_avg_sq = (torch.zeros(1, dtype=torch.float32) for _ in range(4))
    if hasattr(optimizer, "ds_opt_adam") and hasattr(optimizer, "opt_id"):  # DeepSpeedCPUAdam
        for step in range(1, max(steps) + 1):
            optimizer.ds_opt_adam.adam_update(optimizer.opt_id, step, 0.0, beta1, beta2, group["eps"], 0.0,
                                              group["bias_correction"], params, grads, exp_avg, exp_avg_sq)
    elif hasattr(optimizer, "multi_tensor_adam") and device.type == "cpu":  # FusedAdam on the CPU accelerator
        from deepspeed.ops.adam.fused_adam import multi_tensor_applier

        for step in range(1, max(steps) + 1):
            multi_tensor_applier(optimizer.multi_tensor_adam, optimizer._dummy_overflow_buf,
                                 [[grads], [params], [exp_avg], [exp_avg_sq]], 0.0, beta1, beta2, group["eps"],
                                 step, optimizer.adam_w_mode, int(group["bias_correction"]), 0.0)


def state_dict_from_checkpoint(checkpoint_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """Consolidate a ZeRO checkpoint written by any number of ranks into fp32 weights, offline, on CPU."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with _silenced():
        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)


def _available_ram() -> int:
    """MemAvailable from /proc/meminfo (bytes); total physical memory where that file is missing."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _usable_cpus() -> int:
    """The CPUs this process may run on (Slurm and taskset bind jobs to fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


# DeepSpeed's CPU-accelerator ops a run may JIT-build: Adam for CPU offload, FusedAdam for ZeRO without offload
# (the CPU accelerator's FusedAdam is the same kernel), NVMe swapping and the pinned buffers it uses.
CPU_OPS = ("CPUAdamBuilder", "FusedAdamBuilder", "AsyncIOBuilder", "PinMemoryBuilder")


def compile_on_first_call(compile_fn: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    """A decorator that applies ``compile_fn`` to a function at its first call rather than at once."""
    def decorate(fn: Callable) -> Callable:
        compiled: list[Callable] = []

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not compiled:
                compiled.append(compile_fn(fn))
            return compiled[0](*args, **kwargs)
        return call
    return decorate


def import_muon_without_compiling() -> None:
    """Import DeepSpeed's Muon optimizer module with its ``torch.compile`` wrapping deferred to first use.

    Every ZeRO set-up imports that module (to ask whether the optimizer is a Muon one), and the module wraps three
    kernels in ``torch.compile`` as it is imported, which imports TorchInductor: 2-5 s per rank on 2 CPU cores, at
    every training start, for an optimizer cotdistill never uses. ``torch.compile`` compiles at a function's first
    call anyway, so deferring the wrapping to that call changes nothing else. A DeepSpeed without Muon is left as
    it is."""
    if MUON_MODULE in sys.modules:
        return
    try:
        from deepspeed.runtime import compiler
    except ImportError:
        return
    eager = getattr(compiler, "compile", None)
    if eager is None:
        return
    compiler.compile = lambda: compile_on_first_call(eager())
    try:
        importlib.import_module(MUON_MODULE)
    except ImportError:
        pass
    finally:
        compiler.compile = eager


def build_cpu_ops(names: tuple[str, ...] = CPU_OPS) -> dict[str, str]:
    """Compile DeepSpeed's CPU ops into ``TORCH_EXTENSIONS_DIR`` now (``make install``), rather than in the first
    run that needs each one: a fresh virtual environment otherwise spends a few minutes of its first training
    runs compiling on 2 cores, with every rank waiting. Returns op -> "built" or why it was skipped (a machine
    without libaio's headers cannot build the NVMe op). A machine with a GPU is left to DeepSpeed's own
    just-in-time builds (its CUDA ops take longer and depend on the device)."""
    if torch.cuda.is_available():
        return dict.fromkeys(names, "skipped: a GPU is present")
    import deepspeed  # noqa: F401  (sets up the accelerator)
    from deepspeed.accelerator import get_accelerator

    done = {}
    for name in names:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not builder.is_compatible(verbose=False):
            done[name] = "skipped: not buildable on this machine"
            continue
        with _silenced():
            builder.load(verbose=False)
        done[name] = "built"
    return done
