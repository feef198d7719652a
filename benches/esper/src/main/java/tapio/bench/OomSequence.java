package tapio.bench;

import com.espertech.esper.common.client.EPCompiled;
import com.espertech.esper.common.client.EventBean;
import com.espertech.esper.common.client.configuration.Configuration;
import com.espertech.esper.compiler.client.CompilerArguments;
import com.espertech.esper.compiler.client.EPCompilerProvider;
import com.espertech.esper.runtime.client.EPDeployment;
import com.espertech.esper.runtime.client.EPEventService;
import com.espertech.esper.runtime.client.EPRuntime;
import com.espertech.esper.runtime.client.EPRuntimeProvider;
import com.espertech.esper.runtime.client.EPStatement;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;

/**
 * The OOM sequence (kill, then the same process's exit on signal 9, then its container's exit,
 * within 30 s of the kill) as an Esper 9 EPL pattern, over the stream the correlator benchmark
 * writes: one line per observation, times in ms. Facts become events; heartbeats advance
 * Esper's external clock; state updates are read and skipped (no statement needs them).
 *
 * <p>Usage: {@code OomSequence STREAM_FILE KEYS_OUT}. The whole file is parsed into memory
 * first; one untimed pass on a separate runtime warms the JIT; then a fresh runtime processes
 * the stream and only that loop is timed. Prints {@code RESULT key=value ...} on stdout and
 * writes each matched kill ({@code node pid start_ns}) to KEYS_OUT, sorted.
 */
public final class OomSequence {
  private static final String EPL =
      "@name('oom') select kill.node as node, kill.pid as pid, kill.startNs as startNs "
          + "from pattern [every kill=OomKill -> "
          + "(exit=ProcessExit(node=kill.node, pid=kill.pid, startNs=kill.startNs, signal=9) "
          + "-> stop=ContainerExit(containerId=kill.containerId)) where timer:within(30 sec)]";

  /** An OOM kill. */
  public static final class OomKill {
    private final String node;
    private final int pid;
    private final long startNs;
    private final String containerId;

    OomKill(String node, int pid, long startNs, String containerId) {
      this.node = node;
      this.pid = pid;
      this.startNs = startNs;
      this.containerId = containerId;
    }

    public String getNode() { return node; }
    public int getPid() { return pid; }
    public long getStartNs() { return startNs; }
    public String getContainerId() { return containerId; }
  }

  /** A process exit. */
  public static final class ProcessExit {
    private final String node;
    private final int pid;
    private final long startNs;
    private final int signal;
    private final String containerId;

    ProcessExit(String node, int pid, long startNs, int signal, String containerId) {
      this.node = node;
      this.pid = pid;
      this.startNs = startNs;
      this.signal = signal;
      this.containerId = containerId;
    }

    public String getNode() { return node; }
    public int getPid() { return pid; }
    public long getStartNs() { return startNs; }
    public int getSignal() { return signal; }
    public String getContainerId() { return containerId; }
  }

  /** A container exit. */
  public static final class ContainerExit {
    private final String containerId;
    private final int exitCode;
    private final String reason;

    ContainerExit(String containerId, int exitCode, String reason) {
      this.containerId = containerId;
      this.exitCode = exitCode;
      this.reason = reason;
    }

    public String getContainerId() { return containerId; }
    public int getExitCode() { return exitCode; }
    public String getReason() { return reason; }
  }

  /** Any other fact: its node and kind. */
  public static final class OtherFact {
    private final String node;
    private final String kind;

    OtherFact(String node, String kind) {
      this.node = node;
      this.kind = kind;
    }

    public String getNode() { return node; }
    public String getKind() { return kind; }
  }

  /** The parsed stream. */
  private static final class Stream {
    final byte[] kinds;
    final long[] times;
    final Object[] beans;
    final String[] types;

    Stream(int n) {
      kinds = new byte[n];
      times = new long[n];
      beans = new Object[n];
      types = new String[n];
    }
  }

  private static Stream read(Path path) throws IOException {
    List<String> lines = new ArrayList<>();
    try (BufferedReader reader = Files.newBufferedReader(path, StandardCharsets.UTF_8)) {
      String line;
      while ((line = reader.readLine()) != null) {
        lines.add(line);
      }
    }
    Stream stream = new Stream(lines.size());
    for (int i = 0; i < lines.size(); i++) {
      String[] f = lines.get(i).split(" ");
      char kind = f[0].charAt(0);
      stream.kinds[i] = (byte) kind;
      stream.times[i] = Long.parseLong(f[1]);
      switch (kind) {
        case 'K':
          stream.beans[i] =
              new OomKill(f[2], Integer.parseInt(f[3]), Long.parseLong(f[4]), f[5]);
          stream.types[i] = "OomKill";
          break;
        case 'X':
          stream.beans[i] =
              new ProcessExit(
                  f[2], Integer.parseInt(f[3]), Long.parseLong(f[4]), Integer.parseInt(f[5]),
                  f[6]);
          stream.types[i] = "ProcessExit";
          break;
        case 'C':
          stream.beans[i] = new ContainerExit(f[2], Integer.parseInt(f[3]), f[4]);
          stream.types[i] = "ContainerExit";
          break;
        case 'F':
          stream.beans[i] = new OtherFact(f[2], f[3]);
          stream.types[i] = "OtherFact";
          break;
        case 'H':
        case 'S':
          break;
        default:
          throw new IllegalArgumentException(
              path + " line " + (i + 1) + ": unknown record kind `" + f[0] + "`");
      }
    }
    return stream;
  }

  /** What one pass found and how long its loop took. */
  private static final class Pass {
    long nanos;
    long sent;
    long matches;
    final TreeSet<String> keys = new TreeSet<>();
  }

  private static Pass run(Stream stream, String name) throws Exception {
    Configuration config = new Configuration();
    config.getCommon().addEventType("OomKill", OomKill.class);
    config.getCommon().addEventType("ProcessExit", ProcessExit.class);
    config.getCommon().addEventType("ContainerExit", ContainerExit.class);
    config.getCommon().addEventType("OtherFact", OtherFact.class);
    config.getRuntime().getThreading().setInternalTimerEnabled(false);
    EPCompiled compiled =
        EPCompilerProvider.getCompiler().compile(EPL, new CompilerArguments(config));
    EPRuntime runtime = EPRuntimeProvider.getRuntime(name, config);
    EPEventService events = runtime.getEventService();
    long now = 0;
    for (int i = 0; i < stream.times.length; i++) {
      if (stream.kinds[i] == 'H') {
        now = stream.times[i];
        break;
      }
    }
    events.advanceTime(now);
    EPDeployment deployment = runtime.getDeploymentService().deploy(compiled);
    EPStatement statement = deployment.getStatements()[0];
    Pass pass = new Pass();
    statement.addListener(
        (newEvents, oldEvents, stmt, rt) -> {
          if (newEvents == null) {
            return;
          }
          for (EventBean event : newEvents) {
            pass.matches++;
            pass.keys.add(event.get("node") + " " + event.get("pid") + " " + event.get("startNs"));
          }
        });
    long sent = 0;
    long started = System.nanoTime();
    for (int i = 0; i < stream.kinds.length; i++) {
      byte kind = stream.kinds[i];
      if (kind == 'H') {
        long time = stream.times[i];
        if (time > now) {
          events.advanceTime(time);
          now = time;
        }
      } else if (kind != 'S') {
        events.sendEventBean(stream.beans[i], stream.types[i]);
        sent++;
      }
    }
    pass.nanos = System.nanoTime() - started;
    pass.sent = sent;
    runtime.destroy();
    return pass;
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      System.err.println("usage: OomSequence STREAM_FILE KEYS_OUT");
      System.exit(2);
    }
    Stream stream = read(Path.of(args[0]));
    Pass warm = run(stream, "tapio-bench-warm-up");
    System.err.printf(
        "    [seq-esper] warm-up pass: %.3f s, %d matches%n", warm.nanos / 1e9, warm.keys.size());
    Pass pass = run(stream, "tapio-bench-timed");
    try (PrintWriter out = new PrintWriter(Files.newBufferedWriter(Path.of(args[1])))) {
      for (String key : pass.keys) {
        out.println(key);
      }
    }
    double secs = pass.nanos / 1e9;
    int observations = stream.kinds.length;
    System.out.printf(
        "RESULT obs=%d events=%d secs=%.3f obs_per_s=%.0f events_per_s=%.0f oom_matched=%d "
            + "matches=%d cold_secs=%.3f peak_rss_mib=%.1f%n",
        observations,
        pass.sent,
        secs,
        observations / secs,
        pass.sent / secs,
        pass.keys.size(),
        pass.matches,
        warm.nanos / 1e9,
        peakRssMib());
  }

  /** VmHWM of this JVM, MiB (0 when /proc is not there). */
  private static double peakRssMib() {
    try {
      for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
        if (line.startsWith("VmHWM:")) {
          return Long.parseLong(line.replaceAll("[^0-9]", "")) / 1024.0;
        }
      }
    } catch (IOException e) {
      return 0;
    }
    return 0;
  }
}
