"""Fine-tuning methods from the literature, each a plug-in (docs/extending.md): a TuningSection subclass that a run
names by reference, as a user's own method is named, never registered in rayft_core.methods.METHODS.

    tuning: {method: rayft_core.literature.hft:HalfFineTuning, switch_interval: 50}

- hft: Half Fine-Tuning (Hui et al. 2024), half of each layer trains per round;
- sift: sparse fine-tuning (Song et al. 2023), a fixed budget of entries chosen by gradient magnitude;
- owlore: OwLore (Li et al. 2024), outlier-weighted layer sampling with GaLore's low-rank gradients;
- mezo: MeZO (Malladi et al. 2023), zeroth-order SGD from forward passes alone;
- loramoe: LoRAMoE (Dou et al. 2024), LoRA experts mixed by a router on the MLP, with a balancing loss.
"""
