"""Sparse fine-tuning as a rayft plug-in: a fixed budget of trainable entries chosen by gradient magnitude.

Song et al. 2023, "Sparse is Enough in Fine-tuning Pre-trained Large Language Models" (SIFT): the gradient of
fine-tuning is quasi-sparse, so training only the entries with the largest gradients at the start recovers most of
full fine-tuning. At the first optimizer step each weight keeps the ``density`` share of its entries with the
largest absolute gradient (the gradient averaged over every worker, so all choose the same), and from then on
only those entries train, with Adam's moments for them alone (2 x density of AdamW's state). Gradients are still
computed whole; the embeddings stay frozen.

    tuning: {method: rayft_core.literature.sift:SparseFineTuning, density: 0.01}
"""

from pydantic import Field

from rayft_core.methods import TuningSection


class SparseFineTuning(TuningSection):
    optimizer = "sift"  # a name for messages: make_optimizer builds it

    method: str
    density: float = Field(0.01, gt=0, le=1, description="The share of each weight's entries that train.")

    def apply(self, model, run):
        model.requires_grad_(True)
        model.get_input_embeddings().requires_grad_(False)
        return model

    def make_optimizer(self, groups, run, model):
        from rayft_core.train.block_adam import GradientMaskedAdamW
        from rayft_core.train.optim import whole_tensors

        whole_tensors(run, "SIFT")
        return GradientMaskedAdamW(groups, self.density, lr=run.train.learning_rate, betas=(0.9, 0.999), eps=1e-8)

    def problems(self, run):
        if run.deepspeed.zero_stage:
            return [
                f"deepspeed.zero_stage: SIFT steps chosen entries of whole weights; set it to 0, got {run.deepspeed.zero_stage}"
            ]
        return []
