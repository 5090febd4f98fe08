"""The pipeline's stages, in data-flow order; each takes a typed input and returns a typed output.

    plan        lock + recipe + options         -> BuildPlan           (stages/plan.py)
    source      lock                            -> PristineTree        (stages/source.py)
    patches     PristineTree + patches/         -> patched tree        (stages/patches/)
    render      BuildPlan                       -> Dockerfile text     (stages/render.py)
    context     BuildPlan + patched tree        -> BuildContext        (stages/context.py)
    build       BuildContext                    -> BuiltImage          (stages/build.py)
    smoke       Recipe + image                  -> SmokeReport         (stages/smoke.py, smoke_checks.py;
                                                                        tiny models: tinymodel.py, tinyvl.py)
    op_tests    Recipe + image                  -> op-test verdict     (stages/op_tests.py)
    results     reports                         -> StoredResult        (stages/results.py)
    publish     Recipe + validated image        -> ReleaseRecord       (stages/publish.py, tags, record, card)

tools/pipeline.py orders them for the build sessions; tools/cli/ parses arguments and calls one of them.
Stages use tools/core (facts and models) and tools/mech (git, docker, registry, console), never tools/cli.
"""
