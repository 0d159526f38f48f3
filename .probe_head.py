# device probe (not committed): the projection head's training loop, 1 vs 2 torch threads, quiet machine
import sys, time
import numpy as np, torch
from torch import nn
class Head(nn.Module):
    def __init__(s, d, h):
        super().__init__(); s.up = nn.Linear(d, h, bias=False); s.down = nn.Linear(h, d, bias=False); nn.init.zeros_(s.down.weight)
    def forward(s, x): return nn.functional.normalize(x + s.down(torch.relu(s.up(x))), dim=-1)
for threads in (1, 2, 1, 2):
    torch.set_num_threads(threads); torch.manual_seed(0); rng = np.random.default_rng(0)
    v = rng.normal(size=(3057, 384)).astype(np.float32); v /= np.linalg.norm(v, axis=1, keepdims=True)
    x = torch.from_numpy(v); pairs = rng.integers(0, 3057, size=(12000, 2))
    head = Head(384, 384); opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    w, c = time.perf_counter(), time.process_time(); steps = 0
    for epoch in range(3):
        order = rng.permutation(len(pairs))
        for s in range(0, len(order) - 255, 256):
            ch = torch.from_numpy(pairs[order[s:s+256]]); out = head(x[ch.reshape(-1)]).reshape(256, 2, -1)
            logits = out[:, 0] @ out[:, 1].T / 0.05; lab = torch.arange(256)
            loss = (nn.functional.cross_entropy(logits, lab) + nn.functional.cross_entropy(logits.T, lab)) / 2
            opt.zero_grad(); loss.backward(); opt.step(); steps += 1
        with torch.inference_mode(): head(x)
    print(threads, "threads", steps, "steps", round(time.perf_counter() - w, 2), "s wall", round(time.process_time() - c, 2), "s CPU", flush=True)
