"""The one config system: typed dataclasses, a YAML recipe, dotted ``key=value`` overrides, validation.

A run is described by :class:`RunConfig`. ``load_config(path, overrides)`` reads a recipe, applies
overrides such as ``train.max_steps=20 output_dir=runs/x``, and validates the result. Unknown keys are
errors that list the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cotdistill.errors import ConfigError
from cotdistill.formats import FORMATS
from cotdistill.profiling import parse_step_range


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING,
          choices: Callable[[], tuple[str, ...]] | None = None) -> Any:
    """A dataclass field carrying its help text (shown by ``describe_config`` and ``cotdistill <command> --help``).

    ``choices`` returns the accepted values from the registry that validates them, so the help lists exactly
    what validation accepts and never drifts from it.
    """
    metadata = {"help": text, "choices": choices}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _dataset_names() -> tuple[str, ...]:
    """The names ``data.dataset`` and ``problems.dataset`` accept: the loaders' registry and ``synthetic``."""
    from cotdistill.run_data import RUN_DATASETS

    return RUN_DATASETS


def _tiny_family_names() -> tuple[str, ...]:
    """The architectures ``model.make_tiny`` accepts: the student-family registry's names."""
    from cotdistill.families import family_names

    return family_names()


def _eval_set_names() -> tuple[str, ...]:
    """The data set names evaluation accepts (besides .json/.jsonl files): the registry ``check_eval_set`` reads."""
    from cotdistill.eval_sets import EVAL_SETS

    return tuple(EVAL_SETS)


@dataclass
class TinyModelConfig:
    """Size of a randomly initialised student made offline from the training texts."""

    vocab_size: int = _help("tokenizer vocabulary size", 384)
    d_model: int = _help("hidden size", 128)
    num_layers: int = _help("layers (encoder and decoder each, for T5)", 2)
    num_heads: int = _help("attention heads (Llama-like families: half as many key/value heads when even)", 4)
    d_ff: int = _help("feed-forward size", 512)
    n_positions: int = _help("context length (GPT-2's position table, RoPE families' max positions)", 512)
    dropout: float = _help("dropout rate of the tiny model", 0.0)


@dataclass
class ModelConfig:
    name_or_path: str = _help("hub id (google/flan-t5-base, gpt2-large) or local folder", "")
    kind: str = _help("auto | seq2seq | causal; auto reads the model config", "auto")
    make_tiny: str = _help(
        "'' (off) or a student family (cotdistill.families): when name_or_path does not exist, build a tiny "
        "random model of this family there from the training texts (offline demos and tests)", "",
        choices=_tiny_family_names)
    tiny: TinyModelConfig = _help("size of the tiny model made by make_tiny", factory=TinyModelConfig)
    gradient_checkpointing: bool = _help("recompute activations in backward to save memory", False)


@dataclass
class SyntheticDataConfig:
    train_size: int = _help("synthetic training problems", 2000)
    eval_size: int = _help("held-out synthetic problems for evaluation", 100)
    seed: int = _help("generator seed (the held-out set uses a disjoint seed)", 1234)
    min_steps: int = _help("fewest operations per problem", 1)
    max_steps: int = _help("most operations per problem", 3)
    eval_steps: int = _help("operations per held-out problem (0: same range as training)", 3)
    operand_min: int = _help("smallest operand", 1)
    operand_max: int = _help("largest operand", 20)
    operations: list[str] = _help("subset of add, sub, mul", factory=lambda: ["add", "sub"])


@dataclass
class DataConfig:
    dataset: str = _help("synthetic (the embedded generator) or a named data set (traces, jsonl and teacher_data "
                         "read data.path)", "synthetic", choices=_dataset_names)
    split: str = _help("split of the dataset to train on", "train")
    path: str = _help("file for the traces/jsonl loaders", "")
    data_dir: str = _help("folder laid out like shared/data (default: $COTDISTILL_DATA_DIR)", "")
    limit: int = _help("use at most this many training problems (0: all)", 0)
    synthetic: SyntheticDataConfig = _help("the embedded generator's settings", factory=SyntheticDataConfig)
    formats: dict[str, float] = _help(
        "mixture of answer_only, zero_shot_cot, few_shot_cot and the Socratic decomposer, solver, with weights",
        factory=lambda: {"zero_shot_cot": 1.0})
    per_problem: bool = _help("every problem in every format of positive weight (Fu et al.; a unified Socratic "
                              "model), instead of one format drawn per problem by weight", False)
    single_format_batches: bool = _help("build every global batch from one format (all ranks' micro-batches of a "
                                        "step share it)", False)
    k_shot: int = _help("demonstrations in few_shot_cot prompts", 2)
    max_source_tokens: int = _help("source (prompt) tokens kept; longer prompts lose their start", 256)
    max_target_tokens: int = _help("target tokens kept; longer targets are cut at the end", 192)
    chat_template: bool = _help("render every example through the student tokenizer's chat template (prompt as the "
                                "user turn, target as the assistant turn, loss on the assistant's text and its "
                                "end-of-turn token), for instruct checkpoints of decoder-only students; the dev "
                                "evaluation and cotdistill eval of the run use the same template", False)


@dataclass
class OnPolicyTeacherConfig:
    backend: str = _help("hf: a local causal Hugging Face teacher in the training job (replicated on every rank) | "
                         "openai: a served one (vLLM or the OpenAI legacy API: completions with echo=true, "
                         "max_tokens=0, logprobs=top_k)", "hf")
    model: str = _help("the teacher: a Hugging Face folder or hub id (hf), the served model's name (openai)", "")
    device: str = _help("hf: auto | cpu | cuda[:N]", "auto")
    precision: str = _help("hf: bf16 | fp16 | fp32", "fp32")
    batch_size: int = _help("hf: completions scored per teacher forward", 8)
    partition: bool = _help("hf: partition the teacher's weights over the ranks with ZeRO-3 (each rank holds a "
                            "slice, every forward gathers them) instead of holding it whole on every rank: for a "
                            "teacher larger than one rank's memory; on the training ranks' devices", False)
    base_url: str = _help("openai: the server's URL, e.g. http://localhost:8000/v1", "")
    api_key_env: str = _help("openai: environment variable holding the API key (never written anywhere)",
                             "OPENAI_API_KEY")
    concurrency: int = _help("openai: scoring requests in flight at once, per rank", 16)
    timeout: float = _help("openai: seconds to wait for one response before retrying", 120.0)
    max_retries: int = _help("openai: retries of one request on 429, 5xx, timeouts, dropped connections; past "
                             "them the run saves a checkpoint and exits 75 (rerun to resume)", 8)
    backoff_initial: float = _help("openai: first retry delay in seconds; doubles each retry, with full jitter",
                                   1.0)
    backoff_max: float = _help("openai: longest retry delay in seconds", 60.0)


@dataclass
class OnPolicyConfig:
    lmbda: float = _help(
        "fraction of micro-batches whose completions the student samples itself (the rest are the data's "
        "teacher-written targets); the same draw on every rank", 0.5)
    beta: float = _help("generalized JSD: 0 forward KL(teacher || student), 1 reverse KL, between: the mixture", 0.5)
    temperature: float = _help("the student's sampling temperature", 1.0)
    max_new_tokens: int = _help("longest completion the student samples", 128)
    top_k: int = _help("teacher log-probs per token (the top-k support the divergence compares, plus a tail)", 5)
    gather_for_generation: str = _help(
        "auto | true | false: under ZeRO-3, gather the student's whole weights on every rank while it samples "
        "(each rank then generates alone, no collective per layer and token) instead of generating in lockstep "
        "on the partitions; auto gathers when the weights take at most a quarter of a rank's memory", "auto",
        choices=lambda: ("auto", "true", "false"))
    teacher: OnPolicyTeacherConfig = _help("the teacher that scores every completion token",
                                           factory=OnPolicyTeacherConfig)


@dataclass
class TrainConfig:
    max_steps: int = _help("optimizer steps (0: derive from epochs)", 0)
    epochs: float = _help("passes over the training examples when max_steps is 0", 1.0)
    micro_batch_size: int = _help("examples per rank per forward", 8)
    gradient_accumulation: int = _help("micro-batches per optimizer step", 1)
    lr: float = _help("peak learning rate", 5e-4)
    min_lr_ratio: float = _help(
        "learning rate the decay ends at (one step past the last update), as a fraction of the peak", 0.0)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    warmup_steps: int = _help("linear warmup, in optimizer steps", 0)
    schedule: str = _help("cosine | linear | constant decay after warmup", "cosine")
    grad_clip: float = _help("clip the global gradient norm (0: off)", 1.0)
    precision: str = _help("bf16 | fp16 | fp32", "bf16")
    allow_fp16_t5: bool = _help("permit fp16 for T5 anyway (T5 overflows in fp16)", False)
    group_by_length: bool = _help(
        "padded micro-batches (pack_sequences=false, or a seq2seq architecture other than T5) take examples of "
        "similar length to cut padding; packed micro-batches keep their examples as drawn", True)
    length_group_batches: int = _help(
        "global batches sorted by length together: more cuts more padding but makes each batch less varied "
        "(32 cost 0.08 nats of held-out loss on tiny-t5 at 80 steps; 4 matched unsorted batches)", 4)
    pack_sequences: bool = _help(
        "lay each micro-batch's examples end to end with no padding (GPT-2: one row; T5/mT5: one encoder row "
        "and one decoder row), attention kept inside each example (cotdistill.packed_attention); same loss as "
        "padding, no sorting by length. Other seq2seq architectures are padded", True)
    packed_attention: str = _help(
        "how packed causal rows are attended: auto (on CUDA in bf16/fp16 one varlen flash-attention call, "
        "flash-attn's or torch's, where installed; else each example re-padded inside SDPA) | varlen (insist on "
        "the kernel) | repad (never use it)", "auto", choices=lambda: ("auto", "varlen", "repad"))
    seed: int = _help("seed for sampling, dropout and data mixing", 42)
    log_every: int = _help("log scalars every N optimizer steps", 1)
    stop_after_steps: int = _help(
        "end this invocation after N more optimizer steps with a checkpoint, keeping the max_steps "
        "schedule (time-sliced jobs; 0: run to the end)", 0)
    profile_steps: str = _help(
        "profile these optimizer steps with torch.profiler, e.g. 5-8; writes output_dir/profile/ ('': off)", "")
    loss_weights: dict[str, float] = _help(
        "per-format loss weight, e.g. {decomposer: 1.0, solver: 2.0} (missing formats: 1)", factory=dict)
    objective: str = _help(
        "what training optimizes (cotdistill.training_objectives): sft (NLL on the teacher's text) | kd "
        "(distribution matching with train.kd_weight) | on_policy (GKD: the student samples, the teacher scores "
        "each token; train.on_policy) | auto (kd when kd_weight > 0, else sft)", "auto")
    on_policy: OnPolicyConfig = _help("train.objective=on_policy settings", factory=OnPolicyConfig)
    kd_weight: float = _help(
        "distribution matching: per target token (1 - w) * NLL + w * KL(teacher top-k || student); needs "
        "teacher log-probs in the data (build-data sampling.logprobs); 0: plain NLL", 0.0)
    kd_renormalize: bool = _help(
        "renormalize the teacher's top-k probabilities to sum to 1 (false: the missing mass goes to the "
        "token in the text)", True)


@dataclass
class CheckpointConfig:
    every: int = _help("save every N optimizer steps (0: only at the end)", 100)
    keep_last: int = _help("complete checkpoints kept; older ones are deleted", 2)
    resume: bool = _help("resume from the newest complete checkpoint in output_dir", True)
    export_final: bool = _help("write Hugging Face weights to output_dir/final at the end", True)


STRATEGIES = ("answer_only", "zero_shot_cot", "few_shot_cot", "socratic")
PROTOCOLS = ("cotdistill", "kojima", "lm-eval")
ZERO_STAGES = ("auto", "0", "1", "2", "3")


@dataclass
class EvalSpec:
    """How a student is evaluated: one set of defaults for training-time dev evaluation, ``cotdistill eval``
    and ``eval-checkpoints``, so the three give the same number for the same checkpoint."""

    strategy: str = _help("answer_only | zero_shot_cot | few_shot_cot | socratic ('': a run's own mixture decides "
                          "(socratic for decomposer + solver, the heaviest prompt format otherwise); zero_shot_cot "
                          "for a model outside a run)", "")
    protocol: str = _help("cotdistill (the training formats' prompts, marker-strict extraction) | kojima (two-stage "
                          "zero-shot CoT of Kojima et al. 2022: reasoning, then the answer trigger, first answer "
                          "after it) | lm-eval (lm-evaluation-harness GSM8K: Question/Answer prompt, strict-match "
                          "and flexible-extract both reported)", "cotdistill")
    subquestions: str = _help("socratic: model (the decomposer asks) | gold (the data set's own sub-questions; "
                              "the solver alone is tested)", "model")
    max_subquestions: int = _help("socratic: most sub-questions answered per problem", 8)
    k_shot: int = _help("demonstrations for few_shot_cot (cotdistill: drawn with seed from the demo pool; "
                        "lm-eval: the first k)", 4)
    seed: int = _help("seed for demonstration draws and sampled generations (rank r samples with seed + 1000003 r)",
                      0)
    demos: str = _help("a .json/.jsonl file of question/answer records to draw few-shot demonstrations from "
                       "('': the data set's training split)", "")
    max_new_tokens: int = _help("generation budget per problem (socratic: for the sub-questions; kojima: for the "
                                "reasoning)", 256)
    max_step_tokens: int = _help("socratic: generation budget per sub-answer", 64)
    answer_tokens: int = _help("kojima: generation budget of the second (answer) stage", 32)
    max_prompt_tokens: int = _help("prompt tokens kept (the end of the prompt is kept)", 1024)
    batch_size: int = _help("problems per generate call per rank", 16)
    samples: int = _help("self-consistency: sampled generations per problem, majority vote (1: greedy)", 1)
    temperature: float = _help("sampling temperature when samples > 1", 0.7)
    limit: int = _help("evaluate at most this many problems per data set (0: all)", 0)
    precision: str = _help("bf16 | fp16 | fp32 (cotdistill eval; training evaluates in the training precision)",
                           "bf16")
    zero_stage: str = _help("auto | 0 | 1 | 2 | 3: ZeRO stage of the inference engine; auto replicates the model on "
                            "every rank when it fits one device with room for generation (much faster), else 3",
                            "auto")
    offload: bool = _help("offload partitioned weights to CPU memory (ZeRO-3)", False)
    chat_template: bool = _help("prompts as the user turn of the student tokenizer's chat template, generation "
                                "after its assistant header, stopping at its end-of-turn token (cotdistill eval of a "
                                "run: the run's data.chat_template unless given; a training run's dev evaluation "
                                "follows data.chat_template)", False)


@dataclass
class EvalConfig(EvalSpec):
    """Evaluation during and after training: when, on which dev sets, and the shared evaluation spec."""

    at_end: bool = _help("evaluate greedy accuracy on the dev sets after training", True)
    every: int = _help("also evaluate every N optimizer steps (0: only at the end)", 0)
    datasets: list[str] = _help("dev sets besides the synthetic held-out problems, name[:split] as in cotdistill "
                                "eval (e.g. gsm8k, svamp:test) or a .json/.jsonl file; capped at eval.limit problems "
                                "each", factory=list, choices=_eval_set_names)


@dataclass
class RunConfig:
    output_dir: str = _help("run folder: checkpoints, TensorBoard, exported weights, metrics", "runs/default")
    deepspeed_config: str = _help("DeepSpeed JSON template (ds_configs/*.json)", "ds_configs/zero3_offload.json")
    model: ModelConfig = _help("the student", factory=ModelConfig)
    data: DataConfig = _help("training data and formats", factory=DataConfig)
    train: TrainConfig = _help("optimisation", factory=TrainConfig)
    checkpoint: CheckpointConfig = _help("saving, resuming and export", factory=CheckpointConfig)
    eval: EvalConfig = _help("evaluation during and after training", factory=EvalConfig)


@dataclass
class EvalRunConfig(EvalSpec):
    """One evaluation job: a student, the data sets, where results go, and the shared evaluation spec."""

    model: str = _help("exported Hugging Face folder, hub id, run folder or one of its checkpoint folders", "")
    datasets: list[str] = _help(
        "comma-separated name[:split] (bbh: all 27 tasks, or bbh:<task>) or .json/.jsonl files of question/answer "
        "records", factory=lambda: ["gsm8k"], choices=_eval_set_names)
    output_dir: str = _help("folder for predictions, metrics.json and summary.md", "runs/eval")
    decomposer: str = _help("socratic: the decomposer model ('': model, a unified Socratic model)", "")
    solver: str = _help("socratic: the solver model ('': model)", "")
    data_dir: str = _help("folder laid out like shared/data (default: $COTDISTILL_DATA_DIR)", "")
    synthetic: SyntheticDataConfig = _help("generator settings for the 'synthetic' data set",
                                           factory=SyntheticDataConfig)


def eval_spec(config: EvalSpec, **changes: Any) -> EvalSpec:
    """The plain evaluation spec inside a training eval section or an eval job (with ``changes`` applied)."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(EvalSpec)}
    return EvalSpec(**{**values, **changes})


@dataclass
class ProblemsConfig:
    """The questions a teacher answers, with their gold answers (the builder never trusts the teacher)."""

    dataset: str = _help("synthetic (the embedded generator) or a named data set (traces, jsonl and teacher_data "
                         "read problems.path)", "gsm8k", choices=_dataset_names)
    split: str = _help("split of the dataset", "train")
    path: str = _help("file for the jsonl loader", "")
    data_dir: str = _help("folder laid out like shared/data (default: $COTDISTILL_DATA_DIR)", "")
    limit: int = _help("use at most this many problems, the first ones (0: all)", 0)
    synthetic: SyntheticDataConfig = _help("the embedded generator's settings", factory=SyntheticDataConfig)


@dataclass
class TeacherConfig:
    backend: str = _help("openai (any OpenAI-compatible server: vLLM, TGI, the OpenAI API) | hf (a local "
                         "Hugging Face model) | files (traces written elsewhere)", "openai")
    model: str = _help("served model name (openai) or hub id / folder (hf)", "")
    base_url: str = _help("server URL, e.g. http://localhost:8000/v1 ('': the OpenAI API)", "")
    api: str = _help("completions | chat (the prompt goes as one user message)", "completions")
    api_key_env: str = _help("environment variable holding the API key; the key is never written anywhere",
                             "OPENAI_API_KEY")
    concurrency: int = _help("requests in flight at once (openai)", 16)
    timeout: float = _help("seconds to wait for one response before retrying", 120.0)
    max_retries: int = _help("retries of one request on 429, 5xx, timeouts, dropped connections", 8)
    backoff_initial: float = _help("first retry delay in seconds; doubles each retry, with full jitter", 1.0)
    backoff_max: float = _help("longest retry delay in seconds", 60.0)
    samples_per_request: int = _help("completions asked per request (n); 0: all of a question's samples at once",
                                     0)
    device: str = _help("hf: auto | cpu | cuda | cuda:N", "auto")
    precision: str = _help("hf: bf16 | fp16 | fp32", "bf16")
    batch_size: int = _help("hf: sequences (prompts x samples) per generate call", 8)
    files: list[str] = _help("files backend: trace files (JSON list or JSONL), read in order", factory=list)
    question_field: str = _help("files backend: field holding the question", "instruction")
    rationale_field: str = _help("files backend: field holding the teacher's output", "output")


@dataclass
class SamplingConfig:
    temperature: float = _help("sampling temperature (0: greedy)", 0.7)
    top_p: float = _help("nucleus sampling mass", 1.0)
    max_tokens: int = _help("generation budget per sample", 320)
    stop: list[str] = _help("stop strings (not included in the output)", factory=lambda: ["\n\nQuestion:"])
    logprobs: int = _help("store the teacher's top-k log-probs per generated token for distillation (0: off)",
                          0)
    seed: int = _help("base of the per-request seeds (a seeded server such as vLLM repeats itself)", 0)


@dataclass
class CotTaskConfig:
    enabled: bool = _help("sample chain-of-thought rationales", True)
    samples: int = _help("samples per question (Fu et al. used about 40)", 4)
    k_shot: int = _help("exemplars in the few-shot prompt, drawn from problems with gold rationales", 4)
    exemplar_seed: int = _help("seed of the exemplar draw", 0)
    template: str = _help("prompt template file with {exemplars} and {question} ('': built in)", "")


@dataclass
class DecomposeTaskConfig:
    enabled: bool = _help("make Socratic decompositions (sub-question/answer pairs)", False)
    source: str = _help("teacher (ask the teacher) | gold (convert the data set's own annotations: "
                        "gsm8k_socratic, strategyqa, synthetic)", "teacher")
    samples: int = _help("decomposition samples per question", 1)
    k_shot: int = _help("exemplars in the prompt: problems with gold steps, else the built-in ones", 3)
    exemplar_seed: int = _help("seed of the exemplar draw", 0)
    template: str = _help("prompt template file with {exemplars} and {question} ('': built in)", "")


@dataclass
class BuildConfig:
    """One data build: problems, a teacher, what to ask it, where the dataset folder goes."""

    output_dir: str = _help("dataset folder: data/, cache/, manifest.json", "data/default")
    problems: ProblemsConfig = _help("the questions and gold answers", factory=ProblemsConfig)
    teacher: TeacherConfig = _help("the teacher backend", factory=TeacherConfig)
    sampling: SamplingConfig = _help("decoding settings", factory=SamplingConfig)
    cot: CotTaskConfig = _help("chain-of-thought samples", factory=CotTaskConfig)
    decompose: DecomposeTaskConfig = _help("Socratic decompositions", factory=DecomposeTaskConfig)
    shard_size: int = _help("records per JSONL shard of the output", 50000)


# ---------------------------------------------------------------------------------------------------------
# Reading and overriding


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn a YAML value or override string into the annotated type, or say what was expected where."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {annotation.__name__} fields, got {value!r}")
        return _build(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], where)
    if origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, tuple):  # python-fire parses "a,b" into a tuple
            value = list(value)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = typing.get_args(annotation)
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping like {{a: 1, b: 2}}, got {value!r}")
        return {_coerce(k, key_t, where): _coerce(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            if annotation is float:
                return float(value)
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return value if isinstance(value, int) else int(str(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def _unknown_key(cls: type, key: str, where: str) -> ConfigError:
    valid = ", ".join(f.name for f in dataclasses.fields(cls))
    label = f"{where}.{key}" if where else key
    return ConfigError(f"unknown config key '{label}'; valid keys{' in ' + where if where else ''}: {valid}")


def _build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types_:
            raise _unknown_key(cls, key, where)
        kwargs[key] = _coerce(value, types_[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _set_dotted(config: Any, dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    target, where = config, ""
    for part in parts[:-1]:
        types_ = _field_types(type(target))
        if part not in types_:
            raise _unknown_key(type(target), part, where)
        if not dataclasses.is_dataclass(types_[part]):
            label = f"{where}.{part}" if where else part
            raise ConfigError(f"'{label}' is a single value, not a section: write {label}=<value>")
        target, where = getattr(target, part), f"{where}.{part}" if where else part
    leaf = parts[-1]
    types_ = _field_types(type(target))
    if leaf not in types_:
        raise _unknown_key(type(target), leaf, where)
    if dataclasses.is_dataclass(types_[leaf]):
        raise ConfigError(f"'{dotted}' is a section; set one of its keys, e.g. {dotted}.<key>=value")
    # Strings are taken verbatim (YAML would turn 007 into 7 and on into True); others parse as YAML.
    value = raw if types_[leaf] is str else (yaml.safe_load(raw) if raw.strip() else "")
    setattr(target, leaf, _coerce(value, types_[leaf], dotted))


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    """Split ``key=value`` strings, refusing anything else with the offending item named."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.max_steps=20)")
        pairs.append((key.strip(), value))
    return pairs


def eval_config(values: dict[str, Any]) -> EvalRunConfig:
    """Build and validate an evaluation config from keyword values (the CLI's flags), with dotted keys."""
    config = EvalRunConfig()
    for key, value in values.items():
        if value is None:
            raw = ""
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            raw = str(value)  # python-fire turns --output_dir 2024 into an int; keep the text
        else:
            raw = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        _set_dotted(config, key.replace("-", "_"), raw)
    validate_eval(config)
    return config


def _load(cls: type, path: str | Path | None, overrides: list[str] | None) -> Any:
    """Read a YAML recipe into `cls` (or start from its defaults) and apply dotted overrides."""
    values: dict[str, Any] = {}
    if path:
        recipe = Path(path)
        if not recipe.is_file():
            raise ConfigError(f"recipe not found: {recipe}")
        try:
            values = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{recipe}: not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{recipe}: the top level must be a mapping of config sections")
        try:
            config = _build(cls, _expand_env(values))
        except ConfigError as err:
            raise ConfigError(f"{recipe}: {err}") from None
    else:
        config = cls()
    for key, raw in parse_overrides(overrides or []):
        _set_dotted(config, key, raw)
    return config


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, where: str = "") -> Any:
    """Replace ${NAME} in a recipe's strings by the environment variable, so recipes can say
    ${COTDISTILL_DATA_DIR}/...; an unset variable is an error naming the key (never an empty path)."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable ${{{name}}} is not set")
        return os.environ[name]

    return _ENV_REFERENCE.sub(lookup, value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a training recipe (or start from defaults), apply dotted overrides, validate."""
    config = _load(RunConfig, path, overrides)
    validate(config)
    return config


def load_build_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BuildConfig:
    """Read a data-build recipe (recipes/data/*.yaml), apply dotted overrides, validate."""
    config = _load(BuildConfig, path, overrides)
    validate_build(config)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


class ConfigKey(typing.NamedTuple):
    """One leaf key of a config dataclass: dotted name, default and help (choices included)."""

    name: str
    default: Any
    help: str


def _field_help(f: dataclasses.Field) -> str:
    """A field's help text, with the values its registry accepts when it names one."""
    text = f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    return f"{text}; one of: {', '.join(choices())}" if choices else text


def config_keys(cls: type, prefix: str = "") -> list[ConfigKey]:
    """Every leaf key of ``cls`` (nested sections flattened to dotted names) with its default and help: the one
    listing behind ``--keys`` and the CLI's ``--help``, read from the dataclasses themselves."""
    keys = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(config_keys(type(value), f"{prefix}{f.name}."))
        else:
            keys.append(ConfigKey(f"{prefix}{f.name}", value, _field_help(f)))
    return keys


def describe_config(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """One line per key with its default and help text (for --keys and docs)."""
    return [f"{key.name} = {key.default!r}  # {key.help}" for key in config_keys(cls, prefix)]


# ---------------------------------------------------------------------------------------------------------
# Validation: every incompatibility is checked here, in one place


def _choice(value: str, valid: tuple[str, ...], key: str) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(valid)}")


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(config: RunConfig) -> None:
    """Refuse contradictory or impossible settings before any process starts work."""
    if not config.model.name_or_path:
        raise ConfigError("model.name_or_path is empty: give a hub id (e.g. google/flan-t5-base) or a folder")
    _choice(config.model.kind, ("auto", "seq2seq", "causal"), "model.kind")
    _choice(config.model.make_tiny, ("", *_tiny_family_names()), "model.make_tiny")
    t = config.train
    _choice(t.precision, ("bf16", "fp16", "fp32"), "train.precision")
    _choice(t.schedule, ("cosine", "linear", "constant"), "train.schedule")
    _choice(t.packed_attention, ("auto", "varlen", "repad"), "train.packed_attention")
    _positive(t.micro_batch_size, "train.micro_batch_size")
    _positive(t.gradient_accumulation, "train.gradient_accumulation")
    _positive(t.lr, "train.lr")
    _positive(t.max_steps, "train.max_steps", allow_zero=True)
    _positive(t.warmup_steps, "train.warmup_steps", allow_zero=True)
    _positive(t.grad_clip, "train.grad_clip", allow_zero=True)
    _positive(t.log_every, "train.log_every")
    _positive(t.stop_after_steps, "train.stop_after_steps", allow_zero=True)
    _positive(t.length_group_batches, "train.length_group_batches")
    parse_step_range(t.profile_steps)
    if t.max_steps == 0:
        _positive(t.epochs, "train.epochs")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
    c = config.checkpoint
    _positive(c.every, "checkpoint.every", allow_zero=True)
    _positive(c.keep_last, "checkpoint.keep_last")
    d = config.data
    _positive(d.k_shot, "data.k_shot", allow_zero=True)
    _positive(d.max_source_tokens, "data.max_source_tokens")
    _positive(d.max_target_tokens, "data.max_target_tokens")
    s = d.synthetic
    if not 1 <= s.min_steps <= s.max_steps:
        raise ConfigError(f"data.synthetic needs 1 <= min_steps <= max_steps, got {s.min_steps}, {s.max_steps}")
    if s.operand_min > s.operand_max:
        raise ConfigError(f"data.synthetic.operand_min={s.operand_min} > operand_max={s.operand_max}")
    unknown_ops = sorted(set(s.operations) - {"add", "sub", "mul"})
    if unknown_ops or not s.operations:
        raise ConfigError(f"data.synthetic.operations {s.operations} must be a non-empty subset of add, sub, mul")
    for name, weight in t.loss_weights.items():
        _choice(name, FORMATS, "train.loss_weights key")
        _positive(weight, f"train.loss_weights.{name}", allow_zero=True)
    if not 0.0 <= t.kd_weight <= 1.0:
        raise ConfigError(f"train.kd_weight must be in [0, 1], got {t.kd_weight}")
    from cotdistill.training_objectives import check_objective  # here: it imports this module

    check_objective(t)
    validate_spec(config.eval, "eval.")
    _positive(config.eval.every, "eval.every", allow_zero=True)
    if config.eval.chat_template and not d.chat_template:
        raise ConfigError("eval.chat_template=true without data.chat_template: a run's dev evaluation uses the layout "
                          "it trains on; set data.chat_template=true")
    if d.chat_template:
        if config.model.kind == "seq2seq":
            raise ConfigError("data.chat_template is for decoder-only students; model.kind=seq2seq has no chat "
                              "template")
        _chat_protocol(config.eval.protocol, "eval.")


def validate_run(config: RunConfig, world_size: int | None = None) -> None:
    """Everything training refuses before its first step that the config and the files it names decide, in one
    function for ``launchers/train.py`` and ``show-config`` alike: the config itself, the data set's name, split
    and file, the format mixture, the dev sets' names, the DeepSpeed template against the run config, and fp16
    for a T5 whose type is known without a download.

    ``world_size`` (default: $WORLD_SIZE, set by the DeepSpeed launcher) checks a template's fixed
    train_batch_size; unknown (show-config), that one value is left to the launch.
    """
    from cotdistill.ds_config import check_precision, read_template, resolve_ds_config
    from cotdistill.eval_sets import check_eval_sets
    from cotdistill.formats import validate_mixture
    from cotdistill.run_data import check_run_data

    validate(config)
    check_run_data(config.data)
    validate_mixture(config.data.formats)
    check_eval_sets(list(config.eval.datasets))
    template = read_template(config.deepspeed_config)
    if world_size is None and os.environ.get("WORLD_SIZE", "").isdigit():
        world_size = int(os.environ["WORLD_SIZE"])
    if world_size is None:
        template = {key: value for key, value in template.items() if key != "train_batch_size"}
    # The ZeRO sizes that say "auto" follow the model's hidden size, known only once it is loaded; any size
    # lets every other value be compared here.
    resolve_ds_config(template, config, world_size or 1, hidden_size=1, source=config.deepspeed_config)
    model_type = _known_model_type(config.model)
    if model_type:
        check_precision(model_type, config)
    if config.data.chat_template and model_type:
        from cotdistill.families import find_family

        family = find_family(model_type)
        if family is not None and family.kind == "seq2seq":
            raise ConfigError(f"data.chat_template is for decoder-only students; {family.label} ({model_type}) is "
                              "seq2seq and has no chat template")


def check_launch(config: RunConfig) -> None:
    """What a training launch refuses before the trainer's imports (transformers, DeepSpeed: seconds per rank):
    ``validate_run``, then what only a launch decides (the experiment harness validates runs whose student and
    output folders are made later): a local student folder that does not exist, an output folder that cannot be
    written."""
    from cotdistill.outputs import check_output_dir

    validate_run(config)
    _check_model_path(config.model)
    check_output_dir(config.output_dir)


def _check_model_path(model: ModelConfig) -> None:
    """A local student path that does not exist is a mistake unless model.make_tiny builds a model there."""
    from cotdistill.targets import looks_like_a_path

    missing = looks_like_a_path(model.name_or_path) and not Path(model.name_or_path).expanduser().exists()
    if missing and not model.make_tiny:
        raise ConfigError(f"model.name_or_path: model folder {model.name_or_path!r} does not exist (model.make_tiny "
                          "builds a tiny model there when set)")


def _known_model_type(model: ModelConfig) -> str:
    """The student's model_type when it is known without a download: a local folder's config.json, or the tiny
    architecture a recipe builds; '' otherwise."""
    config_file = Path(model.name_or_path) / "config.json"
    if config_file.is_file():
        try:
            found = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return ""  # left for the model loader, which names the problem
        return str(found.get("model_type", "")) if isinstance(found, dict) else ""
    return model.make_tiny


def validate_spec(spec: EvalSpec, prefix: str = "") -> None:
    """The checks every evaluation spec passes, wherever it comes from (``prefix`` names the section)."""
    if spec.strategy:
        _choice(spec.strategy, STRATEGIES, f"{prefix}strategy")
    _choice(spec.protocol, PROTOCOLS, f"{prefix}protocol")
    _choice(spec.subquestions, ("model", "gold"), f"{prefix}subquestions")
    _choice(spec.precision, ("bf16", "fp16", "fp32"), f"{prefix}precision")
    _choice(spec.zero_stage, ZERO_STAGES, f"{prefix}zero_stage")
    for name in ("max_subquestions", "max_new_tokens", "max_step_tokens", "answer_tokens", "max_prompt_tokens",
                 "batch_size", "samples"):
        _positive(getattr(spec, name), prefix + name)
    _positive(spec.k_shot, f"{prefix}k_shot", allow_zero=True)
    _positive(spec.limit, f"{prefix}limit", allow_zero=True)
    if spec.strategy == "socratic" and spec.samples > 1:
        raise ConfigError(f"socratic evaluation is greedy; self-consistency ({prefix}samples > 1) is for the prompt "
                          "strategies")
    if spec.strategy == "socratic" and spec.protocol != "cotdistill":
        raise ConfigError(f"{prefix}protocol={spec.protocol} has no socratic form; socratic evaluation uses "
                          "protocol=cotdistill")
    if spec.protocol == "kojima" and spec.strategy in ("few_shot_cot",):
        raise ConfigError(f"{prefix}protocol=kojima is zero-shot (Kojima et al.): use strategy zero_shot_cot "
                          "(two stages) or answer_only (the answer trigger alone)")
    if spec.protocol == "kojima" and spec.samples > 1:
        raise ConfigError(f"{prefix}protocol=kojima answers greedily in two stages; self-consistency "
                          f"({prefix}samples > 1) is for the other protocols")
    if spec.strategy == "few_shot_cot":
        _positive(spec.k_shot, f"{prefix}k_shot")
    if spec.samples > 1:
        _positive(spec.temperature, f"{prefix}temperature")
    if spec.demos and not spec.demos.endswith((".json", ".jsonl")):
        raise ConfigError(f"{prefix}demos must be a .json or .jsonl file of question/answer records, got "
                          f"{spec.demos!r}")
    if spec.chat_template:
        _chat_protocol(spec.protocol, prefix)


def _chat_protocol(protocol: str, prefix: str) -> None:
    """Kojima's second stage continues the first stage's text as one prompt: a chat layout has no place for it."""
    if protocol == "kojima":
        raise ConfigError(f"{prefix}protocol=kojima continues its first stage's text in a second prompt, which a chat "
                          "template's turns cannot hold; use protocol cotdistill or lm-eval with chat templates")


def validate_eval(config: EvalRunConfig) -> None:
    if not config.model:
        raise ConfigError("model is empty: give an exported folder, a hub id, a run folder or a checkpoint folder")
    if not config.datasets:
        raise ConfigError("datasets is empty: name at least one (e.g. gsm8k,svamp)")
    validate_spec(config)


def validate_build(config: BuildConfig) -> None:
    t = config.teacher
    _choice(t.backend, ("openai", "hf", "files"), "teacher.backend")
    _choice(t.api, ("completions", "chat"), "teacher.api")
    _choice(t.precision, ("bf16", "fp16", "fp32"), "teacher.precision")
    if t.backend in ("openai", "hf") and not t.model:
        what = "served model" if t.backend == "openai" else "hub id or folder"
        raise ConfigError(f"teacher.model is empty: name the {what}")
    if t.backend == "files" and not t.files:
        raise ConfigError("teacher.backend=files needs teacher.files: the trace files to import")
    if t.backend == "files" and config.decompose.enabled and config.decompose.source == "teacher":
        raise ConfigError("teacher.backend=files holds chain-of-thought traces only; set decompose.source=gold "
                          "or decompose.enabled=false")
    if not t.api_key_env or not t.api_key_env.replace("_", "").isalnum():
        # The value is not echoed: a user may have pasted the key itself here.
        raise ConfigError("teacher.api_key_env must be the name of an environment variable (letters, digits, _), "
                          "not the key itself; the key is only read from that variable")
    _positive(t.concurrency, "teacher.concurrency")
    _positive(t.timeout, "teacher.timeout")
    _positive(t.max_retries, "teacher.max_retries", allow_zero=True)
    _positive(t.backoff_initial, "teacher.backoff_initial", allow_zero=True)
    _positive(t.backoff_max, "teacher.backoff_max", allow_zero=True)
    if t.backoff_initial > t.backoff_max:
        raise ConfigError(f"teacher.backoff_initial={t.backoff_initial} is above teacher.backoff_max={t.backoff_max}")
    _positive(t.samples_per_request, "teacher.samples_per_request", allow_zero=True)
    _positive(t.batch_size, "teacher.batch_size")
    s = config.sampling
    _positive(s.temperature, "sampling.temperature", allow_zero=True)
    if not 0 < s.top_p <= 1:
        raise ConfigError(f"sampling.top_p must be in (0, 1], got {s.top_p}")
    _positive(s.max_tokens, "sampling.max_tokens")
    _positive(s.logprobs, "sampling.logprobs", allow_zero=True)
    if any(not stop for stop in s.stop):
        raise ConfigError("sampling.stop holds an empty string; remove it")
    _choice(config.decompose.source, ("teacher", "gold"), "decompose.source")
    if not config.cot.enabled and not config.decompose.enabled:
        raise ConfigError("nothing to build: enable cot, decompose, or both")
    for name, task in (("cot", config.cot), ("decompose", config.decompose)):
        _positive(task.samples, f"{name}.samples")
        _positive(task.k_shot, f"{name}.k_shot", allow_zero=True)
    _positive(config.problems.limit, "problems.limit", allow_zero=True)
    _positive(config.shard_size, "shard_size")
