"""Questions on the terminal for `init`; with --yes every question takes its default."""

from __future__ import annotations

from bastion_tray.core.errors import UsageError


class Prompter:
    """Questions on the terminal; with --yes every question takes its default."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive

    def ask(self, question: str, default: str) -> str:
        if not self.interactive:
            return default
        try:
            answer = input(f"{question} ").strip()
        except EOFError:
            raise UsageError("no answer on the terminal; nothing was written") from None
        return answer or default

    def confirm(self, question: str, default: bool) -> bool:
        answer = self.ask(f"{question} [{'Y/n' if default else 'y/N'}]", "y" if default else "n")
        return answer.lower() in {"y", "yes"}

    def choose(self, question: str, count: int) -> int:
        return self.numbers(f"{question} [1-{count}]", "", count, several=False)[0]

    def numbers(self, question: str, default: str, count: int, *, several: bool) -> list[int]:
        """Numbers from 1 to `count` (0-based in the result); `several`: also "all", "none"."""
        words = {"all": list(range(count)), "none": []} if several else {}
        while True:
            answer = self.ask(question, default).lower()
            picks = answer.replace(",", " ").split()
            if answer in words:
                return words[answer]
            if picks and all(p.isdigit() and 1 <= int(p) <= count for p in picks) \
                    and (several or len(picks) == 1):
                return sorted({int(p) - 1 for p in picks})
            print(f"  type {'all, none, or numbers' if several else 'a number'} from 1 to {count}")
