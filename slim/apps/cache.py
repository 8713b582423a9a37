"""Teacher-cache maintenance: check a cache (for example after copying it to another node) and repair it.

    slim-cache verify cache/r50            # report damaged entries; nothing is changed
    slim-cache verify cache/r50 --repair   # also mark them missing: the next training run refills them
    python tools/cache.py verify cache/r50

Every cached entry is checked against the checksum written with it, every shard's size against its header
(slim/engine/teacher_cache.py). Exit status: 0 when nothing is damaged, 3 when something is (after --repair
too, so that scripts see it), 2 when DIR is not a teacher cache.
"""
import sys

from slim.apps import launch
from slim.engine.teacher_cache import TeacherCache, describe_report

DAMAGE_FOUND = 3


def main(argv=None):
    p = launch.make_parser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check every entry of a teacher cache")
    verify.add_argument("dir", help="the folder given as --teacher_cache")
    verify.add_argument("--repair", action="store_true",
                        help="mark damaged entries missing (and replace unreadable shards) so that the next "
                             "training run's teacher refills them")
    args = p.parse_args(argv)
    cache = TeacherCache.at(args.dir)
    try:
        report = cache.verify(repair=args.repair)
    finally:
        cache.close()
    for line in describe_report(args.dir, report, repaired=args.repair):
        print(line)
    found = report["damaged"] or report["truncated"] or report["unreadable"]
    return DAMAGE_FOUND if found else 0


def cli():
    """The `slim-cache` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
