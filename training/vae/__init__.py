"""Layer 3, the VAE: the model and its training engine.

Entry points: `model.VAE`, `losses.vae_loss`, `trainer.Trainer` (plain callbacks),
`checkpoint.save_checkpoint` / `load_model` (atomic, `weights_only=True`), `data` (batch
streaming from a workspace), `distributed` (DDP for torchrun), `recon_history`,
`metrics` (MAE in HU inside the body, PSNR, SSIM, Dice per ROI; the mean-image baseline).
"""
