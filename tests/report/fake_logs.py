"""fairseq console logs written for the report tests."""
import json
import os

CONFIG = ("2026-01-01 10:00:00 | INFO | fairseq_cli.train | {'_name': None, 'common': {}, "
          "'checkpoint': {'_name': None, 'save_dir': '%s', 'restore_file': 'checkpoint_last.pt', "
          "'continue_once': None, 'finetune_from_model': %s, 'reset_dataloader': False}}")


def _rec(tag, d):
    return f"2026-01-01 10:00:00 | INFO | {tag} | " + json.dumps({k: str(v) for k, v in d.items()})


def write_log(path, epochs, per_epoch=10, wpb=100.0, sec_per_update=2.0, interval=5, start=0,
              loaded=None, extra=None, finetune=None, epoch_extra=None):
    """A fairseq console json log: ``epochs`` valid losses, ``per_epoch`` updates each;
    ``extra``: metrics of every train record, ``epoch_extra``: one dict per epoch."""
    lines = [CONFIG % (os.path.dirname(path), repr(finetune))]
    if loaded is not None:
        lines.append(f"2026-01-01 | INFO | fairseq.trainer | Loaded checkpoint x.pt (epoch 2 @ "
                     f"{loaded} updates)")
    u = start
    for e, loss in enumerate(epochs, start=1 + start // per_epoch):
        for _ in range(per_epoch // interval):
            u += interval
            lines.append(_rec("train_inner", {"epoch": e, "loss": loss + 1, "wpb": wpb,
                                              "num_updates": u,
                                              "wall": (u - start) * sec_per_update,
                                              **(extra or {}),
                                              **(epoch_extra[e - 1] if epoch_extra else {})}))
        lines.append(_rec("valid", {"epoch": e, "valid_loss": loss, "valid_num_updates": u}))
        lines.append(_rec("train", {"epoch": e, "train_loss": loss + 1, "train_wpb": wpb,
                                    "train_num_updates": u,
                                    "train_wall": (u - start) * sec_per_update}))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    return path

