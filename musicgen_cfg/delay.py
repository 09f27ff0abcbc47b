"""THE delay pattern of MusicGen (one place): codebook k is shifted right by k frames.

With K codebooks and T frames the delayed sequence has T + K - 1 steps; the LM predicts step s of
every codebook at once, so codebook k at frame t is predicted after codebook 0 has seen frame t + k.
Positions outside a codebook's shifted window hold the pad id (= the BOS id in MusicGen).

    codes [B, K, T]  --build-->  delayed [B, K, T + K - 1]  --revert-->  [B, K, T]
"""

import torch


def num_steps(num_frames: int, num_codebooks: int) -> int:
    """Decoder steps needed to produce `num_frames` complete frames."""
    return num_frames + num_codebooks - 1


def build_delay_pattern(codes: torch.Tensor, pad_id: int) -> torch.Tensor:
    """codes [B, K, T] -> delayed [B, K, T + K - 1] with pad_id outside each codebook's window."""
    batch, num_codebooks, num_frames = codes.shape
    delayed = codes.new_full((batch, num_codebooks, num_steps(num_frames, num_codebooks)), pad_id)
    for k in range(num_codebooks):
        delayed[:, k, k : k + num_frames] = codes[:, k]
    return delayed


def revert_delay_pattern(delayed: torch.Tensor) -> torch.Tensor:
    """delayed [B, K, T + K - 1, ...] -> [B, K, T, ...]; works for codes and for logits alike."""
    num_codebooks = delayed.shape[1]
    num_frames = delayed.shape[2] - num_codebooks + 1
    return torch.stack([delayed[:, k, k : k + num_frames] for k in range(num_codebooks)], dim=1)


def valid_step_mask(num_frames: int, num_codebooks: int, device=None) -> torch.Tensor:
    """[K, T + K - 1] bool: True where codebook k holds a real frame at that step (not pad)."""
    steps = torch.arange(num_steps(num_frames, num_codebooks), device=device)
    offsets = torch.arange(num_codebooks, device=device)[:, None]
    return (steps >= offsets) & (steps < offsets + num_frames)


def teacher_forcing_inputs(codes: torch.Tensor, pad_id: int) -> torch.Tensor:
    """codes [B, K, T] -> LM inputs [B, K, T + K - 1]: BOS, then the delayed codes minus the last step.

    The LM output at step s predicts delayed step s, so the input at step s is delayed step s - 1
    (BOS = pad_id at s = 0).
    """
    delayed = build_delay_pattern(codes, pad_id)
    bos = delayed.new_full(delayed[:, :, :1].shape, pad_id)
    return torch.cat([bos, delayed[:, :, :-1]], dim=2)
