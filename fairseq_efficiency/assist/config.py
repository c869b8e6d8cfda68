"""Options of instance selection (AutoAssist and baselines), mixed into the task config."""
from dataclasses import dataclass, field

from fairseq.dataclass import ChoiceEnum

from fairseq_efficiency.errors import PluginConfigError

SELECTION_CHOICES = ChoiceEnum(["uniform", "autoassist", "self-paced", "dynamic-sampling",
                                "competence"])
DIFFICULTY_CHOICES = ChoiceEnum(["length", "rarity"])
PRESET_CHOICES = ChoiceEnum(["paper", "authors"])
THRESHOLD_CHOICES = ChoiceEnum(["ema", "pass-mean"])
FLOOR_CHOICES = ChoiceEnum(["keep", "b"])
FEATURE_CHOICES = ChoiceEnum(["tfidf", "tfidf-tf-len"])


@dataclass
class AutoAssistConfig:
    instance_selection: SELECTION_CHOICES = field(
        default="uniform",
        metadata={"help": "which training instances reach the model: uniform (fairseq's own "
                  "batches), autoassist (a learned Assistant shrinks low-loss instances, Zhang "
                  "et al. 2019), self-paced (SPL), dynamic-sampling (Wang et al. 2018) or "
                  "competence (curriculum, Platanios et al. 2019). Loss-based choices need "
                  "--criterion sentence_cross_entropy"},
    )
    assist_lr: float = field(
        default=0.1, metadata={"help": "Assistant learning rate eta (eq. 5; constant, per instance)"})
    assist_l2: float = field(
        default=1e-4, metadata={"help": "Assistant L2 weight decay lambda (eq. 5)"})
    assist_threshold_decay: float = field(
        default=0.99, metadata={"help": "EMA decay of the loss threshold T_k over Boss batches "
                                "(bias-corrected)"})
    assist_confidence_decay: float = field(
        default=0.95, metadata={"help": "EMA decay of the confidence rho_k over the Assistant's "
                                "accuracy (rho_0 = 0)"})
    assist_min_keep: float = field(
        default=0.5, metadata={"help": "floor on a candidate's keep probability 1 - rho + rho*g "
                               "(the authors' code keeps every instance with probability >= 0.5 "
                               "after the first pass; 0 = Algorithm 1 as written)"})
    assist_warmup_epochs: int = field(
        default=1, metadata={"help": "epochs in which nothing is shrunk while the Assistant already "
                             "learns (the authors' code: the first pass)"})
    assist_queue_size: int = field(
        default=16, metadata={"help": "capacity (batches) of the Boss queue; the Assistant queue "
                              "holds 4x as many loss batches (section 4.2)"})
    assist_pool_batches: int = field(
        default=4, metadata={"help": "kept instances of this many neighbouring batches of "
                             "fairseq's length-sorted batching are merged and cut into full "
                             "batches"})
    assist_preset: PRESET_CHOICES = field(
        default="paper", metadata={"help": "named set of the Assistant options below: paper "
                                   "(the paper's Algorithm 1, the defaults) or authors (the "
                                   "authors' code); options given with a non-default value win"})
    assist_threshold: THRESHOLD_CHOICES = field(
        default="ema", metadata={"help": "loss threshold T: ema (bias-corrected EMA, eq. 4) or "
                                 "pass-mean (uncorrected EMA in the first pass, then the mean "
                                 "loss of the previous pass, fixed for the pass)"})
    assist_floor_on: FLOOR_CHOICES = field(
        default="keep", metadata={"help": "where --assist-min-keep floors: keep (the final "
                                  "probability 1 - rho + rho*g) or b (b = max(min_keep, 1 - rho), "
                                  "keep = b + (1 - b)*g)"})
    assist_loss_smoothing: float = field(
        default=0.0, metadata={"help": "label smoothing of the per-sentence loss the policy "
                               "learns from (token-mean; 0 = NLL)"})
    assist_features: FEATURE_CHOICES = field(
        default="tfidf", metadata={"help": "Assistant features: tfidf, or tfidf-tf-len (plus "
                                   "term frequencies and source/target lengths / 10)"})
    assist_mini_steps: int = field(
        default=0, metadata={"help": "0: per-instance SGD updates; k > 0: each Boss batch is "
                             "bootstrap-resampled and learned in min(k, ceil(|B|/4)) plain SGD "
                             "mini-steps of lr/|b| with weight decay --assist-l2"})
    assist_rebuild_features: bool = field(
        default=False, metadata={"help": "rebuild the cached TF-IDF features even if valid"})
    spl_start_quantile: float = field(
        default=0.5, metadata={"help": "self-paced: share of instances (lowest losses) kept in "
                               "epoch 2"})
    spl_growth: float = field(
        default=1.3, metadata={"help": "self-paced: per-epoch growth factor of that share"})
    ds_sample_rate: float = field(
        default=0.8, metadata={"help": "dynamic-sampling: expected share of instances per epoch"})
    ds_review_share: float = field(
        default=0.2, metadata={"help": "dynamic-sampling: share of the sample drawn uniformly "
                               "(review) instead of by loss decline"})
    competence_difficulty: DIFFICULTY_CHOICES = field(
        default="length", metadata={"help": "competence: sentence difficulty, source length or "
                                    "word rarity (-sum of log unigram probabilities of the "
                                    "source tokens, from the training source side)"})
    competence_steps: int = field(
        default=5000, metadata={"help": "competence: T, updates until every instance is "
                                "available, c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2))"})
    competence_c0: float = field(
        default=0.01, metadata={"help": "competence: initial competence c0 (the paper's 0.01)"})
    assist_unlearnable: bool = field(
        default=False, metadata={"help": "down-weight unlearnable instances (loss not falling "
                                 "with the corpus's over their last visits, e.g. noisy pairs) in "
                                 "a loss-based --instance-selection (uniform included)"})
    assist_unlearnable_visits: int = field(
        default=6, metadata={"help": "unlearnable: window V, an instance's last V visits "
                             "(memory: 2V + 1 numbers per training pair)"})
    assist_unlearnable_alpha: float = field(
        default=0.25, metadata={"help": "unlearnable: flagged when above the corpus loss level "
                                "with a slope of log-loss on log corpus level below alpha over "
                                "the window"})
    assist_unlearnable_keep: float = field(
        default=0.1, metadata={"help": "unlearnable: factor on a flagged instance's keep "
                               "probability"})
    assist_unlearnable_min_fall: float = field(
        default=0.05, metadata={"help": "unlearnable: a window is judged only when the corpus "
                                "log-loss fell by at least this much over it"})


def validate(cfg):
    """Reject invalid values with one clear message."""
    sel = str(getattr(cfg, "instance_selection", "uniform"))
    if sel not in SELECTION_CHOICES.__members__ and sel not in [str(c) for c in SELECTION_CHOICES]:
        raise PluginConfigError(
            f"--instance-selection must be one of uniform, autoassist, self-paced, "
            f"dynamic-sampling, competence; got {sel!r}")
    checks = [
        ("assist_lr", lambda v: v > 0, "> 0"),
        ("assist_l2", lambda v: v >= 0, ">= 0"),
        ("assist_threshold_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("assist_confidence_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("assist_min_keep", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("assist_queue_size", lambda v: v >= 2, ">= 2"),
        ("assist_pool_batches", lambda v: v >= 2, ">= 2"),
        ("assist_warmup_epochs", lambda v: v >= 0, ">= 0"),
        ("assist_loss_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("assist_mini_steps", lambda v: v >= 0, ">= 0"),
        ("spl_start_quantile", lambda v: 0 < v <= 1, "in (0, 1]"),
        ("spl_growth", lambda v: v >= 1, ">= 1"),
        ("ds_sample_rate", lambda v: 0 < v <= 1, "in (0, 1]"),
        ("ds_review_share", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("competence_steps", lambda v: v >= 1, ">= 1"),
        ("competence_c0", lambda v: 0 < v <= 1, "in (0, 1]"),
        ("assist_unlearnable_visits", lambda v: v >= 2, ">= 2"),
        ("assist_unlearnable_alpha", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("assist_unlearnable_keep", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("assist_unlearnable_min_fall", lambda v: v >= 0, ">= 0"),
    ]
    for name, ok, what in checks:
        v = getattr(cfg, name)
        if not ok(v):
            raise PluginConfigError(f"--{name.replace('_', '-')} must be {what}, got {v}")
    if getattr(cfg, "assist_unlearnable", False) and sel == "competence":
        raise PluginConfigError("--assist-unlearnable needs a loss-based --instance-selection "
                                "(uniform, autoassist, self-paced or dynamic-sampling), "
                                "not competence")
    return sel
