"""Run DeepSpeed's two CPU Adam kernels (DeepSpeedCPUAdam, FusedAdam) for a few steps in this process.

usage: adam_steps.py full STATE_DIR        steps 1..12, saving each optimizer's state after step 5
       adam_steps.py resume STATE_DIR      steps 6..12 from those states, as a resumed run (this fresh process)
       adam_steps.py resume-noreplay DIR   the same without cotdistill's replay of the kernel's beta^t product
Prints one line per kernel: its name and its weights as exact hex floats. Step k's gradient is drawn from seed k,
so every process sees the same gradients at the same step.
"""

import sys
from pathlib import Path

import torch
from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam

from cotdistill.engine import replay_adam_step_products

mode, folder = sys.argv[1], Path(sys.argv[2])
for name, make in (("cpu_adam", DeepSpeedCPUAdam), ("fused_adam", FusedAdam)):
    param = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 37))
    optimizer = make([param], lr=1e-2, weight_decay=0.01)
    first = 1
    if mode != "full":
        saved = torch.load(folder / f"{name}.pt", weights_only=False)
        param.data.copy_(saved["param"])
        optimizer.load_state_dict(saved["optimizer"])
        if mode == "resume":
            replay_adam_step_products(optimizer, torch.device("cpu"))
        first = 6
    for step in range(first, 13):
        param.grad = torch.randn(37, generator=torch.Generator().manual_seed(step))
        optimizer.step()
        if mode == "full" and step == 5:
            torch.save({"param": param.data.clone(), "optimizer": optimizer.state_dict()}, folder / f"{name}.pt")
    print(name, " ".join(float(v).hex() for v in param.data))
