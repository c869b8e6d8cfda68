"""The Assistant: an online L2-regularised logistic regression g(psi | theta) (AutoAssist, section 4.1).

Usable without fairseq: give it feature rows and the Boss's per-sentence losses.

* Threshold ``T_k`` (eq. 4): a bias-corrected exponential moving average of
  recent Boss losses, ``m_k = beta * m_{k-1} + (1 - beta) * mean(loss_B)``,
  ``T_k = m_k / (1 - beta^k)``.
* Labels ``z_i = [loss_i > T_k]``; one online step per Boss batch (eq. 5) with
  scikit-learn's :class:`~sklearn.linear_model.SGDClassifier` (``log_loss``,
  ``l2`` penalty, constant learning rate): ``theta <- (1 - eta*lambda) theta - eta * grad``.
* Confidence ``rho_k = gamma * rho_{k-1} + (1 - gamma) * acc_k``, where ``acc_k``
  is the accuracy of g on the incoming batch measured **before** learning from
  it; ``rho_0 = 0``, so nothing is shrunk until the Assistant has proven itself.
* Keep probability of a candidate (Algorithm 1): ``1 - rho + rho * g(psi_i)``,
  optionally floored at ``min_keep``.

The authors' code (``autoassist-exp``, ``fairseq/data/assistant.py``) differs in three
places, each an option here (:mod:`fairseq_efficiency.assist.presets` names the sets):

* ``threshold="pass-mean"``: ``T`` is an EMA without bias correction (from 0)
  during the first pass over the data, then the mean loss of the whole previous
  pass, held fixed for the pass (:meth:`start_pass` marks the pass boundaries);
* ``floor_on="b"``: the floor is on the base rate, ``b = max(min_keep, 1 - rho)``,
  keep ``= b + (1 - b) * g`` (equal to Algorithm 1 when ``min_keep = 0``);
* ``mini_steps=k > 0``: plain SGD instead of per-instance updates -- each Boss batch
  is bootstrap-resampled (seeded) and split into ``min(k, ceil(|B| / 4))`` mini-steps
  ``theta <- theta - lr / |b| * (sum_i (g_i - z_i) psi_i + lambda * theta)`` (bias included).
"""
import hashlib
import math
import warnings

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin

# learned state (scikit-learn's trailing underscore) and its value before any Boss batch
_UNFITTED = dict(loss_ema_=0.0, steps_=0, rho_=0.0, last_accuracy_=math.nan, passes_=0,
                 pass_sum_=0.0, pass_count_=0, pass_threshold_=math.nan)


class Assistant(ClassifierMixin, BaseEstimator):
    """scikit-learn conventions: ``__init__`` stores the parameters only (``get_params``,
    ``clone``); learned state ends in ``_`` and is created by :meth:`partial_fit`,
    :meth:`start_pass` or :meth:`load_state_dict` (read before that, the scalars have their
    unfitted values: ``rho_ = 0``, ``threshold_ = nan``); :meth:`predict_proba` returns
    ``[P(z=0), P(z=1)]`` per row, :meth:`predict` the label ``z``."""

    def __init__(self, n_features, lr=0.1, l2=1e-4, threshold_decay=0.99,
                 confidence_decay=0.95, min_keep=0.0, seed=0, threshold="ema",
                 floor_on="keep", mini_steps=0):
        self.n_features = n_features
        self.lr = lr
        self.l2 = l2
        self.threshold_decay = threshold_decay
        self.confidence_decay = confidence_decay
        self.min_keep = min_keep
        self.seed = seed
        self.threshold = threshold
        self.floor_on = floor_on
        self.mini_steps = mini_steps

    def __getattr__(self, name):  # only for attributes not set: unfitted learned scalars
        if name in _UNFITTED:
            return _UNFITTED[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _check_params(self):
        if int(self.n_features) < 1:
            raise ValueError(f"n_features must be >= 1, got {self.n_features}")
        if (self.threshold not in ("ema", "pass-mean") or self.floor_on not in ("keep", "b")
                or int(self.mini_steps) < 0):
            raise ValueError(f"threshold {self.threshold!r}, floor_on {self.floor_on!r}, "
                             f"mini_steps {self.mini_steps}")

    def _init_state(self):
        """Creates the learned state (once)."""
        if "clf_" in vars(self):
            return
        from sklearn.linear_model import SGDClassifier

        self._check_params()
        self.clf_ = SGDClassifier(loss="log_loss", penalty="l2", alpha=float(self.l2),
                                  learning_rate="constant", eta0=float(self.lr),
                                  random_state=self.seed)
        self.rng_ = np.random.default_rng([int(self.seed), 2654435761])  # bootstrap resampling
        for k, v in _UNFITTED.items():
            setattr(self, k, v)

    @property
    def fitted(self):
        """Whether the classifier has learned from at least one Boss batch."""
        return "clf_" in vars(self) and hasattr(self.clf_, "coef_")

    @property
    def classes_(self):
        return np.array([0, 1])

    # -- prediction -----------------------------------------------------------------------
    def _proba_one(self, x):
        """g(psi | theta): probability that each row's Boss loss exceeds T (0.5 before any fit)."""
        if not self.fitted:
            return np.full(x.shape[0], 0.5)
        # the classifier's own weights; not clf_.decision_function, whose input validation
        # costs ~20x the product on the worker's 256-candidate chunks
        return expit(x @ self.clf_.coef_[0] + self.clf_.intercept_[0])

    def predict_proba(self, x):
        """``[1 - g, g]`` per row of ``x``; g = P(loss > T) (eq. 4)."""
        g = np.asarray(self._proba_one(x), dtype=np.float64)
        return np.column_stack([1.0 - g, g])

    def predict(self, x):
        """The label ``z = [loss > T]`` the Assistant predicts for each row."""
        return (self.predict_proba(x)[:, 1] > 0.5).astype(np.int64)

    def keep_prob(self, x):
        """Algorithm 1's keep probability ``1 - rho + rho * g``, floored at ``min_keep``
        (``floor_on="b"``: ``b + (1 - b) * g`` with ``b = max(min_keep, 1 - rho)``)."""
        g = self.predict_proba(x)[:, 1]
        if self.floor_on == "b":
            b = max(float(self.min_keep), 1.0 - self.rho_)
            return b + (1.0 - b) * g
        p = 1.0 - self.rho_ + self.rho_ * g
        return np.maximum(p, float(self.min_keep)) if self.min_keep > 0 else p

    @property
    def threshold_(self):
        """T_k (nan before the first batch): the bias-corrected EMA of Boss losses, or with
        ``threshold="pass-mean"`` the uncorrected EMA in the first pass and the previous
        pass's mean loss after it."""
        if self.threshold == "pass-mean":
            if self.passes_ > 0 and np.isfinite(self.pass_threshold_):
                return self.pass_threshold_
            return self.loss_ema_ if self.steps_ else float("nan")
        if self.steps_ == 0:
            return float("nan")
        return self.loss_ema_ / (1.0 - float(self.threshold_decay) ** self.steps_)

    def start_pass(self):
        """A new pass over the data begins: the pass-mean threshold becomes the mean Boss
        loss of the pass that ended (kept when that pass produced no loss)."""
        self._init_state()
        if self.pass_count_:
            self.pass_threshold_ = self.pass_sum_ / self.pass_count_
        self.pass_sum_, self.pass_count_ = 0.0, 0
        self.passes_ += 1

    # -- learning -------------------------------------------------------------------------
    def partial_fit(self, x, losses):
        """Learn from one Boss batch: features ``x`` [B, F] and per-sentence losses [B]
        (labels ``z = [loss > T]``, eq. 5). ``last_accuracy_`` is g's accuracy on this batch
        measured before the update (nan before the first fit)."""
        self._init_state()
        losses = np.asarray(losses, dtype=np.float64)
        if losses.ndim != 1 or x.shape[0] != len(losses):
            raise ValueError(f"{x.shape[0]} feature rows vs {losses.shape} losses")
        ok = np.isfinite(losses)
        if not ok.all():
            x, losses = x[ok], losses[ok]
        if len(losses) == 0:
            return self
        self.steps_ += 1
        b = float(self.threshold_decay)
        self.loss_ema_ = b * self.loss_ema_ + (1.0 - b) * float(losses.mean())
        self.pass_sum_ += float(losses.sum())
        self.pass_count_ += len(losses)
        z = (losses > self.threshold_).astype(np.int64)
        if self.fitted:  # accuracy before learning drives the confidence rho
            acc = float((self.predict(x) == z).mean())
            g = float(self.confidence_decay)
            self.rho_ = g * self.rho_ + (1.0 - g) * acc
            self.last_accuracy_ = acc
        if self.mini_steps:
            self._bootstrap_steps(x, z)
            return self
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # float64 always, so a restored classifier sees the dtype it was built with
            self.clf_.partial_fit(x.astype(np.float64), z, classes=self.classes_)
        return self

    def mini_step_slices(self, n):
        """Bootstrap sample of ``n`` rows (seeded) cut into ``min(mini_steps, ceil(n / 4))``
        mini-steps of ``ceil(n / steps)`` rows, as the authors' ``train_tfidf_step``."""
        self._init_state()
        steps = min(int(self.mini_steps), int(np.ceil(n / 4)))
        rows = self.rng_.integers(0, n, size=n)
        size = int(np.ceil(n / steps))
        return [rows[i:i + size] for i in range(0, n, size)]

    def _bootstrap_steps(self, x, z):
        """Plain SGD with L2 weight decay on the classifier's own weights (bias decayed too)."""
        if not self.fitted:
            self._init_clf()
            self.clf_.coef_[:] = 0.0
            self.clf_.intercept_[:] = 0.0
        w, b = self.clf_.coef_[0], self.clf_.intercept_
        lr, l2 = float(self.lr), float(self.l2)
        for rows in self.mini_step_slices(len(z)):
            xb, zb = x[rows], z[rows]
            grad = expit(xb @ w + b[0]) - zb
            eta = lr / len(rows)
            w -= eta * (np.asarray(xb.T @ grad).ravel() + l2 * w)
            b -= eta * (grad.sum() + l2 * b)

    def _init_clf(self):
        """One dummy partial_fit initialises sklearn's internals (weights replaced after)."""
        import scipy.sparse as sp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.clf_.partial_fit(sp.csr_matrix((1, int(self.n_features)), dtype=np.float64),
                                  [0], classes=self.classes_)

    def diagnostics(self):
        """``rho``, ``T`` and the last accuracy (for the logs; read without learning)."""
        return {"rho": self.rho_, "T": self.threshold_, "assistant_acc": self.last_accuracy_}

    # -- state: the checkpoint format is unchanged (keys without "_") ---------------------
    def state_dict(self):
        st = {
            "n_features": int(self.n_features), "fitted": self.fitted,
            "loss_ema": self.loss_ema_, "steps": self.steps_, "rho": self.rho_,
            "last_accuracy": self.last_accuracy_, "passes": self.passes_,
            "pass_sum": self.pass_sum_, "pass_count": self.pass_count_,
            "pass_threshold": self.pass_threshold_,
        }
        if "rng_" in vars(self):
            st["rng"] = self.rng_.bit_generator.state
        if self.fitted:
            st.update(coef=self.clf_.coef_.copy(), intercept=self.clf_.intercept_.copy(),
                      t=float(self.clf_.t_))
        return st

    def load_state_dict(self, st):
        if st["n_features"] != self.n_features:
            raise ValueError(f"Assistant state has {st['n_features']} features, the data "
                             f"has {self.n_features}: the training data or --assist-features changed "
                             "since the checkpoint")
        self._init_state()
        # (states of earlier versions also hold "sentences_seen", no longer kept: ignored)
        self.loss_ema_, self.steps_ = float(st["loss_ema"]), int(st["steps"])
        self.rho_, self.last_accuracy_ = float(st["rho"]), float(st["last_accuracy"])
        # (states of earlier versions have no pass statistics: a fresh pass count)
        self.passes_, self.pass_count_ = int(st.get("passes", 0)), int(st.get("pass_count", 0))
        self.pass_sum_ = float(st.get("pass_sum", 0.0))
        self.pass_threshold_ = float(st.get("pass_threshold", float("nan")))
        if "rng" in st:
            self.rng_.bit_generator.state = st["rng"]
        if st["fitted"]:
            coef = np.asarray(st["coef"], dtype=np.float64)
            intercept = np.asarray(st["intercept"], dtype=np.float64)
            if coef.shape != (1, self.n_features) or intercept.shape != (1,):
                raise ValueError(f"Assistant state: weights of shape {coef.shape} and "
                                 f"{intercept.shape}, expected (1, {self.n_features}) and (1,)")
            self._init_clf()
            self.clf_.coef_, self.clf_.intercept_ = coef, intercept
            self.clf_.t_ = float(st["t"])
        elif self.fitted:  # an unfitted state: forget what this classifier learned
            from sklearn.base import clone

            self.clf_ = clone(self.clf_)
        return self

    def fingerprint(self):
        """Short digest of the weights and scalars (logged on save/restore to verify resume)."""
        h = hashlib.sha1()
        if self.fitted:
            coef, intercept = self.clf_.coef_.ravel(), float(self.clf_.intercept_[0])
        else:  # the weights sklearn starts from
            coef, intercept = np.zeros(int(self.n_features), dtype=np.float64), 0.0
        h.update(np.ascontiguousarray(coef).tobytes())
        h.update(repr((intercept, self.loss_ema_, self.steps_, self.rho_)).encode())
        if self.passes_ or self.pass_count_:  # (digests of states without passes unchanged)
            h.update(repr((self.passes_, self.pass_sum_, self.pass_count_)).encode())
        return h.hexdigest()[:12]
