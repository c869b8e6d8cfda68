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
import warnings

import numpy as np
from scipy.special import expit


class Assistant:
    def __init__(self, n_features, lr=0.1, l2=1e-4, threshold_decay=0.99,
                 confidence_decay=0.95, min_keep=0.0, seed=0, threshold="ema",
                 floor_on="keep", mini_steps=0):
        from sklearn.linear_model import SGDClassifier

        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if threshold not in ("ema", "pass-mean") or floor_on not in ("keep", "b") or mini_steps < 0:
            raise ValueError(f"threshold {threshold!r}, floor_on {floor_on!r}, mini_steps {mini_steps}")
        self.threshold_mode, self.floor_on, self.mini_steps = threshold, floor_on, int(mini_steps)
        self.lr, self.l2 = float(lr), float(l2)
        self.rng = np.random.default_rng([int(seed), 2654435761])  # bootstrap resampling
        self.passes = 0           # pass boundaries seen (start_pass)
        self.pass_sum = 0.0       # sum and count of this pass's sentence losses
        self.pass_count = 0
        self.pass_threshold = float("nan")  # mean loss of the previous pass
        self.n_features = int(n_features)
        self.threshold_decay = float(threshold_decay)
        self.confidence_decay = float(confidence_decay)
        self.min_keep = float(min_keep)
        self.clf = SGDClassifier(loss="log_loss", penalty="l2", alpha=l2, learning_rate="constant",
                                 eta0=lr, random_state=seed)
        self.loss_ema = 0.0   # m_k (biased)
        self.steps = 0        # k: Boss batches observed
        self.rho = 0.0        # rho_0 = 0
        self.last_accuracy = float("nan")

    @property
    def fitted(self):
        """Whether the classifier has learned from at least one Boss batch."""
        return hasattr(self.clf, "coef_")

    # -- prediction -----------------------------------------------------------
    def predict(self, x):
        """g(psi | theta): probability that each row's Boss loss exceeds T (0.5 before any fit)."""
        if not self.fitted:
            return np.full(x.shape[0], 0.5)
        # the classifier's own weights; not clf.decision_function, whose input validation
        # costs ~20x the product on the worker's 256-candidate chunks
        return expit(x @ self.clf.coef_[0] + self.clf.intercept_[0])

    def keep_prob(self, x):
        """Algorithm 1's keep probability ``1 - rho + rho * g``, floored at ``min_keep``
        (``floor_on="b"``: ``b + (1 - b) * g`` with ``b = max(min_keep, 1 - rho)``)."""
        if self.floor_on == "b":
            b = max(self.min_keep, 1.0 - self.rho)
            return b + (1.0 - b) * self.predict(x)
        p = 1.0 - self.rho + self.rho * self.predict(x)
        return np.maximum(p, self.min_keep) if self.min_keep > 0 else p

    @property
    def threshold(self):
        """T_k (nan before the first batch): the bias-corrected EMA of Boss losses, or with
        ``threshold="pass-mean"`` the uncorrected EMA in the first pass and the previous
        pass's mean loss after it."""
        if self.threshold_mode == "pass-mean":
            if self.passes > 0 and np.isfinite(self.pass_threshold):
                return self.pass_threshold
            return self.loss_ema if self.steps else float("nan")
        if self.steps == 0:
            return float("nan")
        return self.loss_ema / (1.0 - self.threshold_decay ** self.steps)

    def start_pass(self):
        """A new pass over the data begins: the pass-mean threshold becomes the mean Boss
        loss of the pass that ended (kept when that pass produced no loss)."""
        if self.pass_count:
            self.pass_threshold = self.pass_sum / self.pass_count
        self.pass_sum, self.pass_count = 0.0, 0
        self.passes += 1

    # -- learning -------------------------------------------------------------
    def update(self, x, losses):
        """Learn from one Boss batch: features ``x`` [B, F] and per-sentence losses [B].

        Returns the accuracy of g on this batch measured before the update.
        """
        losses = np.asarray(losses, dtype=np.float64)
        if losses.ndim != 1 or x.shape[0] != len(losses):
            raise ValueError(f"{x.shape[0]} feature rows vs {losses.shape} losses")
        ok = np.isfinite(losses)
        if not ok.all():
            x, losses = x[ok], losses[ok]
        if len(losses) == 0:
            return float("nan")
        self.steps += 1
        b = self.threshold_decay
        self.loss_ema = b * self.loss_ema + (1.0 - b) * float(losses.mean())
        self.pass_sum += float(losses.sum())
        self.pass_count += len(losses)
        z = (losses > self.threshold).astype(np.int64)
        acc = float("nan")
        if self.fitted:  # accuracy before learning drives the confidence rho
            acc = float(((self.predict(x) > 0.5).astype(np.int64) == z).mean())
            g = self.confidence_decay
            self.rho = g * self.rho + (1.0 - g) * acc
            self.last_accuracy = acc
        if self.mini_steps:
            self._bootstrap_steps(x, z)
            return acc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # float64 always, so a restored classifier sees the dtype it was built with
            self.clf.partial_fit(x.astype(np.float64), z, classes=np.array([0, 1]))
        return acc

    def mini_step_slices(self, n):
        """Bootstrap sample of ``n`` rows (seeded) cut into ``min(mini_steps, ceil(n / 4))``
        mini-steps of ``ceil(n / steps)`` rows, as the authors' ``train_tfidf_step``."""
        steps = min(self.mini_steps, int(np.ceil(n / 4)))
        rows = self.rng.integers(0, n, size=n)
        size = int(np.ceil(n / steps))
        return [rows[i:i + size] for i in range(0, n, size)]

    def _bootstrap_steps(self, x, z):
        """Plain SGD with L2 weight decay on the classifier's own weights (bias decayed too)."""
        if not self.fitted:
            self._init_clf()
            self.clf.coef_[:] = 0.0
            self.clf.intercept_[:] = 0.0
        w, b = self.clf.coef_[0], self.clf.intercept_
        for rows in self.mini_step_slices(len(z)):
            xb, zb = x[rows], z[rows]
            grad = expit(xb @ w + b[0]) - zb
            eta = self.lr / len(rows)
            w -= eta * (np.asarray(xb.T @ grad).ravel() + self.l2 * w)
            b -= eta * (grad.sum() + self.l2 * b)

    def _init_clf(self):
        """One dummy partial_fit initialises sklearn's internals (weights replaced after)."""
        import scipy.sparse as sp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.clf.partial_fit(sp.csr_matrix((1, self.n_features), dtype=np.float64), [0],
                                 classes=np.array([0, 1]))

    # -- state ----------------------------------------------------------------
    def state_dict(self):
        st = {
            "n_features": self.n_features, "fitted": self.fitted, "loss_ema": self.loss_ema,
            "steps": self.steps, "rho": self.rho, "last_accuracy": self.last_accuracy,
            "passes": self.passes, "pass_sum": self.pass_sum, "pass_count": self.pass_count,
            "pass_threshold": self.pass_threshold, "rng": self.rng.bit_generator.state,
        }
        if self.fitted:
            st.update(coef=self.clf.coef_.copy(), intercept=self.clf.intercept_.copy(),
                      t=float(self.clf.t_))
        return st

    def load_state_dict(self, st):
        if st["n_features"] != self.n_features:
            raise ValueError(f"Assistant state has {st['n_features']} features, the data "
                             f"has {self.n_features}: the training data or --assist-features changed "
                             "since the checkpoint")
        # (states of earlier versions also hold "sentences_seen", no longer kept: ignored)
        for k in ("loss_ema", "steps", "rho", "last_accuracy"):
            setattr(self, k, st[k])
        # (states of earlier versions have no pass statistics: a fresh pass count)
        self.passes, self.pass_count = int(st.get("passes", 0)), int(st.get("pass_count", 0))
        self.pass_sum = float(st.get("pass_sum", 0.0))
        self.pass_threshold = float(st.get("pass_threshold", float("nan")))
        if "rng" in st:
            self.rng.bit_generator.state = st["rng"]
        if st["fitted"]:
            self._init_clf()
            self.clf.coef_ = np.array(st["coef"], dtype=np.float64)
            self.clf.intercept_ = np.array(st["intercept"], dtype=np.float64)
            self.clf.t_ = st["t"]
        elif self.fitted:  # an unfitted state: forget what this classifier learned
            from sklearn.base import clone

            self.clf = clone(self.clf)

    def fingerprint(self):
        """Short digest of the weights and scalars (logged on save/restore to verify resume)."""
        h = hashlib.sha1()
        if self.fitted:
            coef, intercept = self.clf.coef_.ravel(), float(self.clf.intercept_[0])
        else:  # the weights sklearn starts from
            coef, intercept = np.zeros(self.n_features, dtype=np.float64), 0.0
        h.update(np.ascontiguousarray(coef).tobytes())
        h.update(repr((intercept, self.loss_ema, self.steps, self.rho)).encode())
        if self.passes or self.pass_count:  # (digests of states without passes unchanged)
            h.update(repr((self.passes, self.pass_sum, self.pass_count)).encode())
        return h.hexdigest()[:12]
