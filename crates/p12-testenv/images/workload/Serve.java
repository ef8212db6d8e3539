// `workload serve`: a TLS server on a PKCS#12 keystore, loaded once at start.
//
// Like Tomcat or Kafka it never reloads the keystore: after a renewal the pod
// keeps serving the old certificate until it restarts, which is exactly what the
// operator's probes must notice. With `--reload true` it is a hot-reloading
// server instead: before each handshake it compares the keystore file with the
// one it loaded and, if the kubelet has replaced it, loads the new one. Each connection gets the handshake, one line
// with the served leaf's SHA-256 fingerprint, and is closed. A connection that
// closes before sending a byte (a kubelet tcpSocket readiness probe) is dropped
// silently, so the port doubles as the readiness check.

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.SSLSocketFactory;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;

final class Serve {
    static final Set<String> OPTIONS =
            Set.of("--keystore", "--password-file", "--port", "--bind", "--alias", "--client-auth", "--reload");

    /** A client that connects and sends nothing is cut off after this long. */
    private static final int IDLE_MILLIS = 10_000;

    static int run(Workload.Options o) throws Exception {
        Path keystore = o.path("--keystore", Workload.DEFAULT_KEYSTORE);
        Path passwordFile = o.path("--password-file", Workload.DEFAULT_PASSWORD_FILE);
        int port = o.integer("--port", 8443);
        String bind = o.string("--bind", "0.0.0.0");
        List<String> clientAuth = o.list("--client-auth");

        boolean reload = Boolean.parseBoolean(o.string("--reload", "false"));
        String wantedAlias = o.string("--alias", null);
        byte[] loadedBytes = Files.readAllBytes(keystore);
        char[] password = Workload.readPassword(passwordFile);
        KeyStore ks = Workload.loadPkcs12(keystore, password);
        String alias = keyAlias(ks, wantedAlias, keystore);
        X509Certificate leaf = (X509Certificate) ks.getCertificate(alias);
        String fingerprint = Workload.sha256(leaf);
        // Serve exactly the chosen entry: a keystore with one key entry is the
        // operator's layout, --alias picks one from a bigger store.
        ks = onlyEntry(ks, alias, password);
        KeyManagerFactory kmf = KeyManagerFactory.getInstance("PKIX");
        kmf.init(ks, password);

        TrustManager[] trust = null;
        if (!clientAuth.isEmpty()) {
            Path truststore = Path.of(clientAuth.get(0));
            Path trustPasswordFile = clientAuth.size() > 1 ? Path.of(clientAuth.get(1)) : passwordFile;
            char[] trustPassword = Workload.readPassword(trustPasswordFile);
            TrustManagerFactory tmf = TrustManagerFactory.getInstance("PKIX");
            tmf.init(Workload.loadPkcs12(truststore, trustPassword));
            Arrays.fill(trustPassword, '\0');
            trust = tmf.getTrustManagers();
        }
        Arrays.fill(password, '\0');
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), trust, null);
        SSLSocketFactory factory = ctx.getSocketFactory();
        boolean needClientAuth = trust != null;

        ServerSocket server = new ServerSocket();
        server.setReuseAddress(true);
        server.bind(new InetSocketAddress(bind, port), 128);
        System.out.println("serving " + keystore + " on " + bind + ":" + server.getLocalPort()
                + " alias=" + alias + " subject=" + Workload.subject(leaf) + " sha256=" + fingerprint
                + " clientAuth=" + (needClientAuth ? "required" : "none") + " reload=" + reload);

        // One thread per connection: a slow client must not hold up a probe.
        ExecutorService pool = Executors.newCachedThreadPool();
        Current current = new Current(factory, (fingerprint + "\n").getBytes(StandardCharsets.US_ASCII), loadedBytes);
        TrustManager[] trustManagers = trust;
        while (true) {
            Socket raw = server.accept();
            pool.execute(() -> {
                Current c = current;
                if (reload) {
                    c = reloaded(current, keystore, passwordFile, wantedAlias, trustManagers);
                }
                handle(raw, c.factory, needClientAuth, c.line);
            });
        }
    }

    /** What is served now; replaced as a whole when the keystore file changes. */
    private static final class Current {
        volatile SSLSocketFactory factory;
        volatile byte[] line;
        volatile byte[] bytes;

        Current(SSLSocketFactory factory, byte[] line, byte[] bytes) {
            this.factory = factory;
            this.line = line;
            this.bytes = bytes;
        }
    }

    /** Loads the keystore again if its file changed; on any failure keeps serving what it had. */
    private static synchronized Current reloaded(
            Current current, Path keystore, Path passwordFile, String wantedAlias, TrustManager[] trust) {
        try {
            byte[] now = Files.readAllBytes(keystore);
            if (Arrays.equals(now, current.bytes)) {
                return current;
            }
            char[] password = Workload.readPassword(passwordFile);
            KeyStore ks = Workload.loadPkcs12(keystore, password);
            String alias = keyAlias(ks, wantedAlias, keystore);
            X509Certificate leaf = (X509Certificate) ks.getCertificate(alias);
            String fingerprint = Workload.sha256(leaf);
            ks = onlyEntry(ks, alias, password);
            KeyManagerFactory kmf = KeyManagerFactory.getInstance("PKIX");
            kmf.init(ks, password);
            Arrays.fill(password, '\0');
            SSLContext ctx = SSLContext.getInstance("TLS");
            ctx.init(kmf.getKeyManagers(), trust, null);
            current.factory = ctx.getSocketFactory();
            current.line = (fingerprint + "\n").getBytes(StandardCharsets.US_ASCII);
            current.bytes = now;
            System.out.println("reloaded " + keystore + " sha256=" + fingerprint);
        } catch (Exception e) {
            System.out.println("reload of " + keystore + " failed, still serving the previous keystore: " + e);
        }
        return current;
    }

    private static void handle(Socket raw, SSLSocketFactory factory, boolean needClientAuth, byte[] line) {
        String peer = String.valueOf(raw.getRemoteSocketAddress());
        try (raw) {
            raw.setSoTimeout(IDLE_MILLIS);
            InputStream in = raw.getInputStream();
            int first = in.read();
            if (first < 0) {
                return; // connect-and-close: a TCP readiness probe
            }
            // Hand the byte already read to the TLS layer (server mode).
            try (SSLSocket tls = (SSLSocket) factory.createSocket(
                    raw, new ByteArrayInputStream(new byte[] {(byte) first}), true)) {
                tls.setUseClientMode(false);
                tls.setNeedClientAuth(needClientAuth);
                tls.startHandshake();
                String who = "";
                if (needClientAuth) {
                    X509Certificate client = (X509Certificate) tls.getSession().getPeerCertificates()[0];
                    who = " client=" + Workload.subject(client);
                }
                System.out.println("connection from " + peer + " " + tls.getSession().getProtocol() + who);
                OutputStream out = tls.getOutputStream();
                out.write(line);
                out.flush();
            }
        } catch (Exception e) {
            System.out.println("connection from " + peer + " failed: " + e);
        }
    }

    private static String keyAlias(KeyStore ks, String wanted, Path file) throws Exception {
        List<String> keys = new ArrayList<>();
        for (String a : Collections.list(ks.aliases())) {
            if (ks.isKeyEntry(a)) {
                keys.add(a);
            }
        }
        if (wanted != null) {
            if (!keys.contains(wanted)) {
                throw new IllegalArgumentException(file + " has no key entry " + wanted + " (key entries: " + keys + ")");
            }
            return wanted;
        }
        if (keys.size() != 1) {
            throw new IllegalArgumentException(
                    file + " holds " + keys.size() + " key entries " + keys + "; pick one with --alias");
        }
        return keys.get(0);
    }

    private static KeyStore onlyEntry(KeyStore ks, String alias, char[] password) throws Exception {
        KeyStore one = KeyStore.getInstance("PKCS12");
        one.load(null, null);
        KeyStore.ProtectionParameter p = new KeyStore.PasswordProtection(password);
        one.setEntry(alias, ks.getEntry(alias, p), p);
        return one;
    }
}
