"""S1i (docs/findings.md), an experiment that was not adopted: Muon on the blocks' weight
matrices, AdamW (worldrep's, unchanged) on the rest, swapped into every process of a
`worldrep run` when MUON=1 and this folder is on PYTHONPATH (Python imports `sitecustomize`
at start-up). Kept so that the notebook's numbers can be rerun; see README.md here.

Muon (as torch.optim.Muon, with its update scaled to AdamW's RMS, "match_rms_adamw", so the
run's lr and weight decay keep their meaning): momentum 0.95 with Nesterov, five quintic
Newton-Schulz iterations in float32, each fused matrix (q|k|v, gate|up) orthogonalised per
part; the run's clipped gradient and linear schedule.
"""

import os

if os.environ.get("MUON") == "1":
    import torch

    import worldrep.train.loop as loop
    from worldrep.train.optim import AdamW

    def orthogonalise(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
        """~U V^T of g [K, m, n] (torch.optim.Muon's quintic iteration and coefficients)."""
        a, b, c = 3.4445, -4.775, 2.0315
        x = g.float()
        tall = x.size(-2) > x.size(-1)
        if tall:
            x = x.mT
        x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
        for _ in range(steps):
            gram = x @ x.mT
            x = a * x + (b * gram + c * gram @ gram) @ x
        return x.mT if tall else x

    class MuonHybrid(AdamW):
        def __init__(self, model, *args, **kwargs):
            super().__init__(model, *args, **kwargs)
            self.matrices = []  # (parameter, the row sizes of the maps it fuses, or None)
            for block in model.blocks:
                s = block.spec
                q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
                self.matrices += [(block.qkv_w, [q, kv, kv]), (block.o_w, None),
                                  (block.gate_up_w, [s.intermediate] * 2), (block.down_w, None)]
            self.buffers = [torch.zeros_like(p.data) for p, _ in self.matrices]
            self.index = {id(p): i for i, p in enumerate(self.params)}

        @torch._dynamo.disable  # compiled, this update ran at 0.1 steps a second
        @torch.no_grad()
        def update(self, grads):
            before = [p.data.clone() for p, _ in self.matrices]
            lr = self.lr_now().clone()
            k = self.flat.shape[0]
            norm = torch.linalg.vector_norm(
                torch.cat([x.reshape(k, -1) for x in grads], dim=1).float(), dim=1)
            clip = (self.clip / (norm + 1e-6)).clamp(max=1)
            out = super().update(grads)  # AdamW on everything; the matrices are redone below
            for (p, parts), old, buffer in zip(self.matrices, before, self.buffers, strict=True):
                g = grads[self.index[id(p)]].float() * clip[:, None, None]
                buffer.lerp_(g, 1 - 0.95)
                u = g.lerp(buffer, 0.95)
                pieces = u.split(parts, dim=1) if parts else [u]
                o = torch.cat([orthogonalise(x) * 0.2 * max(x.shape[-2:]) ** 0.5
                               for x in pieces], dim=1)
                decayed = old * (1 - (lr * self.weight_decay)[:, None, None])
                p.data.copy_(decayed - lr[:, None, None] * o)
            return out

    loop.AdamW = MuonHybrid
