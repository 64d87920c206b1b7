"""How fast each provider delivers, for sizing pieces and the endgame (sans-IO; see plan.py)."""

from __future__ import annotations


class Pace:
    """How fast each provider's streams usually deliver (bytes/s per stream, from the pieces received).

    Used to size a provider's pieces to its share of the links (``share``), and in the endgame: a copy
    of a piece in flight is asked for only when the idle provider should deliver it sooner than the
    fetcher will (``worth_copying``); a piece that has taken ``factor`` times longer than expected is
    taken for stuck. Before any piece has arrived, a copy only after ``first_age`` seconds."""

    def __init__(self, factor: float = 1.5, first_age: float = 2.0) -> None:
        self.factor = factor
        self.first_age = first_age
        self._seen: dict[str, tuple[float, int]] = {}

    def record(self, seconds: float, size: int, provider: str = "") -> None:
        spent, got = self._seen.get(provider, (0.0, 0))
        self._seen[provider] = (spent + max(0.0, seconds), got + size)

    def rate(self, provider: str | None = None) -> float | None:
        """Bytes/s of one stream of this provider (of all providers together when unknown)."""
        if provider is not None and provider in self._seen:
            spent, got = self._seen[provider]
            if spent > 0 and got > 0:
                return got / spent
        spent = sum(s for s, _ in self._seen.values())
        got = sum(g for _, g in self._seen.values())
        return got / spent if spent > 0 and got > 0 else None

    def share(self, provider: str | None) -> float:
        """This provider's stream rate over the mean of the providers measured (1 when unknown)."""
        rates = [g / s for s, g in self._seen.values() if s > 0 and g > 0]
        mine = self.rate(provider) if provider in self._seen else None
        if not rates or mine is None:
            return 1.0
        return mine / (sum(rates) / len(rates))

    def worth_copying(self, size: int, handed_at: float, fetchers: set[str], me: str, now: float) -> float | None:
        """How much sooner ``me`` would deliver a piece of ``size`` bytes than its fetchers will (None:
        not sooner)."""
        mine = self.rate(me)
        if mine is None:
            return now - handed_at - self.first_age if now - handed_at >= self.first_age else None
        due = []
        for fetcher in fetchers:
            rate = self.rate(fetcher) or mine
            expected = size / rate
            stuck = now - handed_at > self.factor * expected
            due.append(float("inf") if stuck else handed_at + expected)
        my_due = now + size / mine * 1.1  # a margin: a copy costs bandwidth
        gain = min(due) - my_due
        return gain if gain > 0 else None
