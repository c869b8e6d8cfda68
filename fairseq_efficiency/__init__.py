"""fairseq-efficiency: cheaper NMT training as a fairseq plugin.

``fairseq-train --user-dir $(fairseq-efficiency-userdir) ...`` imports this
package, which registers every task, criterion, model and architecture of the
plugin and installs the torch/fairseq compatibility shims (:mod:`.compat`).
"""
__version__ = "0.1.0"

from fairseq_efficiency import compat

compat.install()

from fairseq_efficiency import criterions, task  # noqa: E402,F401  (registration)
from fairseq_efficiency import assist  # noqa: E402,F401  (registration)
from fairseq_efficiency import meprop  # noqa: E402,F401  (registration)
from fairseq_efficiency import pruning  # noqa: E402,F401  (registration)
from fairseq_efficiency import parallel  # noqa: E402,F401  (registration)
