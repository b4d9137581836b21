"""``hypermachine vm …``: the command line for people, built on the SDK (``hypermachine.client``).

``parser`` declares the verbs; ``run`` makes the client and turns errors into exit
codes; ``lifecycle``, ``guest`` and ``terminal`` hold the verbs; ``output`` prints;
``progress`` draws ``image pull``'s bar.

May import: ``client``, ``errors``, ``images`` (the progress callback's type), ``models``.
"""

from .parser import add_client_commands

__all__ = ["add_client_commands"]
