"""Every hook a plugin can implement, in one place.

A plugin is a module (or any object) with functions decorated by ``orchestrator.api.hookimpl`` whose names match
the specifications below. Built-in plugins live in the ``orchestrator_plugins`` package (the repository's
``plugins/`` folder); third-party ones are found through the ``orchestrator.plugins`` entry-point group::

    # setup.cfg of a third-party package
    [options.entry_points]
    orchestrator.plugins =
        my_channel = my_package.plugin

A plugin imports from the orchestrator only ``orchestrator.api``. Hooks are called through
``orchestrator.plugin_manager.manager().hook.<name>(...)``; each specification documents when it is called and what
it must return. A plugin that raises on import or in a ``register_*`` hook, or registers a name another plugin
already has, is left out with a warning (``orchestrator plugins`` lists it with its error); the rest load.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("orchestrator")
hookimpl = pluggy.HookimplMarker("orchestrator")


@hookspec
def register_commands(cli):
    """Add commands to the ``orchestrator`` command line.

    Called once when the CLI starts. ``cli`` is the top-level ``click.Group``; add commands or groups to it
    with ``cli.add_command(...)`` or the ``@cli.command()`` decorator. Return value is ignored.
    """


@hookspec
def register_channels():
    """Return a list of channel classes this plugin provides.

    Called once when the plugin manager is built. Each class implements ``orchestrator.api.Channel``;
    its ``name`` attribute (``email``, ``sms``, …) is the key campaign files use under ``message:``. A name
    another plugin already registered (built-ins load first) leaves this plugin out, with a warning.
    """


@hookspec
def register_facts():
    """Return a list of ``orchestrator.api.FactSpec`` objects to add to the condition language.

    Each spec declares the fact's name, value kind, parameters and documentation; its ``build`` callable
    returns the fact as a SQL expression over ``orchestrator.api.customers_table``: ``build(compiler, compare)``, where
    ``compiler`` is the ``orchestrator.segments.SegmentCompiler`` (``compiler.ctx.at`` is the run time,
    ``compiler.facts`` the built-in ``CustomerFacts``, ``compiler.paid_orders_of_customer(compare)`` the
    correlated conditions for this customer's paid orders) and ``compare`` the parsed comparison with its
    parameters. The compiler applies the comparison operators to the expression.
    Names must not clash with built-in facts.
    """


@hookspec
def register_offers():
    """Return a list of offer classes (subclasses of ``orchestrator.api.OfferKind``).

    Each class's ``name`` is the key campaign files use under ``offer:`` (e.g. ``coupon``); its
    ``options_model`` validates the terms written there.
    """


@hookspec(firstresult=True)
def handle_inbound_sms(conn, settings, phone, text, received_at):
    """Decide one inbound SMS reply that the service received (``POST /hooks/sms/<provider>``).

    ``conn`` is an open transaction, ``phone`` the sender as the provider gave it, ``text`` the reply,
    ``received_at`` an aware time. Return ``"suppressed"`` (a new opt-out), ``"unchanged"`` (already opted out)
    or ``"ignored"`` (not an opt-out); None leaves it to the next plugin. The built-in SMS plugin implements it
    with the same keywords and suppression as ``import sms-replies``. Raise ``InputError`` for a number that
    does not parse.
    """
