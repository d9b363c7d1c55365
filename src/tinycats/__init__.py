"""tinycats: a cat classifier and a tiny diffusion transformer on one Lightning stack."""
