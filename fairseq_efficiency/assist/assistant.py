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
"""
import hashlib
import warnings

import numpy as np
from scipy.special import expit


class Assistant:
    def __init__(self, n_features, lr=0.1, l2=1e-4, threshold_decay=0.99,
                 confidence_decay=0.95, min_keep=0.0, seed=0):
        from sklearn.linear_model import SGDClassifier

        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
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
        """Algorithm 1's keep probability ``1 - rho + rho * g``, floored at ``min_keep``."""
        p = 1.0 - self.rho + self.rho * self.predict(x)
        return np.maximum(p, self.min_keep) if self.min_keep > 0 else p

    @property
    def threshold(self):
        """T_k, the bias-corrected EMA of Boss losses (nan before the first batch)."""
        if self.steps == 0:
            return float("nan")
        return self.loss_ema / (1.0 - self.threshold_decay ** self.steps)

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
        z = (losses > self.threshold).astype(np.int64)
        acc = float("nan")
        if self.fitted:  # accuracy before learning drives the confidence rho
            acc = float(((self.predict(x) > 0.5).astype(np.int64) == z).mean())
            g = self.confidence_decay
            self.rho = g * self.rho + (1.0 - g) * acc
            self.last_accuracy = acc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # float64 always, so a restored classifier sees the dtype it was built with
            self.clf.partial_fit(x.astype(np.float64), z, classes=np.array([0, 1]))
        return acc

    # -- state ----------------------------------------------------------------
    def state_dict(self):
        st = {
            "n_features": self.n_features, "fitted": self.fitted, "loss_ema": self.loss_ema,
            "steps": self.steps, "rho": self.rho, "last_accuracy": self.last_accuracy,
        }
        if self.fitted:
            st.update(coef=self.clf.coef_.copy(), intercept=self.clf.intercept_.copy(),
                      t=float(self.clf.t_))
        return st

    def load_state_dict(self, st):
        if st["n_features"] != self.n_features:
            raise ValueError(f"Assistant state has {st['n_features']} features, the data "
                             f"has {self.n_features}: the training data changed since the checkpoint")
        # (states of earlier versions also hold "sentences_seen", no longer kept: ignored)
        for k in ("loss_ema", "steps", "rho", "last_accuracy"):
            setattr(self, k, st[k])
        if st["fitted"]:
            # one dummy partial_fit initialises sklearn's internals, then the weights are replaced
            import scipy.sparse as sp

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.clf.partial_fit(sp.csr_matrix((1, self.n_features), dtype=np.float64), [0], classes=np.array([0, 1]))
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
        return h.hexdigest()[:12]
