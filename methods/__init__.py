"""Built-in methods, one file each; installed as `clbench.methods`.

`BUILTIN` maps registry names to "module:Class" and is read lazily by `clbench.registry`: a method's module is
imported only when it is looked up. Adding a method touches its file, one line here, one test file and the
docs line generated from its class.
"""

from clbench.protocol import Hooks, MethodConfig, RunContext, option

__all__ = ["BUILTIN", "Hooks", "MethodConfig", "RunContext", "option"]

BUILTIN: dict[str, str] = {
    "naive": "clbench.methods.naive:Naive",
    "replay": "clbench.methods.replay:Replay",
    "lwf": "clbench.methods.lwf:LwF",
    "joint": "clbench.methods.joint:Joint",
    "single-task": "clbench.methods.single_task:SingleTask",
    "ewc": "clbench.methods.ewc:EWC",
    "si": "clbench.methods.si:SI",
    "gem": "clbench.methods.gem:GEM",
    "agem": "clbench.methods.agem:AGEM",
    "lora": "clbench.methods.lora:LoRA",
    "fip": "clbench.methods.fip:FIP",
    "fip-geometric": "clbench.methods.fip_geometric:FIPGeometric",
    "fip-lora": "clbench.methods.fip_lora:FIPLoRA",
    "o-lora": "clbench.methods.o_lora:OLoRA",
}
